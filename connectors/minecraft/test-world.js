'use strict'
// World generators for test-server.js: a flat overworld with biomes by x and a few features,
// and a flat nether that sets the nether biome. See test-server.js for the layout.

const { Vec3 } = require('vec3')

const GROUND = 4 // grass; players stand at y = GROUND + 1

function biomeAt (x) {
  if (x >= 256) return 'desert'
  if (x < -256) return 'snowy_tundra'
  return 'forest'
}

function inBox (x, z, x0, x1, z0, z1) {
  return x >= x0 && x < x1 && z >= z0 && z < z1
}

function overworld (options) {
  const { registry } = options
  const Chunk = require('prismarine-chunk')(registry)
  const id = (name) => registry.blocksByName[name].id
  const blocks = {
    bedrock: id('bedrock'),
    dirt: id('dirt'),
    grass: id('grass_block'),
    sand: id('sand'),
    snow: id('snow_block'),
    stone: id('stone'),
    water: id('water'),
    lava: id('lava')
  }
  const biomeIds = {
    forest: registry.biomesByName.forest.id,
    desert: registry.biomesByName.desert.id,
    snowy_tundra: (registry.biomesByName.snowy_tundra ?? registry.biomesByName.snowy_plains).id // renamed in 1.18
  }

  return function generateChunk (chunkX, chunkZ) {
    const chunk = new Chunk()
    const pos = new Vec3(0, 0, 0)
    for (let lx = 0; lx < 16; lx++) {
      for (let lz = 0; lz < 16; lz++) {
        const x = chunkX * 16 + lx
        const z = chunkZ * 16 + lz
        const biome = biomeAt(x)
        const top = biome === 'desert' ? blocks.sand : biome === 'snowy_tundra' ? blocks.snow : blocks.grass
        let fluid = null
        if (inBox(x, z, 32, 40, 32, 40)) fluid = blocks.water
        if (inBox(x, z, 48, 56, 32, 40)) fluid = blocks.lava
        const roofed = inBox(x, z, 32, 48, -48, -32)
        for (let y = 0; y < 256; y++) {
          pos.set(lx, y, lz)
          if (y === 0) chunk.setBlockType(pos, blocks.bedrock)
          else if (fluid !== null && y >= 2 && y <= GROUND) chunk.setBlockType(pos, fluid)
          else if (y < GROUND) chunk.setBlockType(pos, blocks.dirt)
          else if (y === GROUND) chunk.setBlockType(pos, top)
          else if (roofed && y >= 8 && y <= 20) chunk.setBlockType(pos, blocks.stone)
          chunk.setSkyLight(pos, 15)
          chunk.setBiome(pos, biomeIds[biome])
        }
      }
    }
    return chunk
  }
}

function nether (options) {
  const { registry } = options
  const Chunk = require('prismarine-chunk')(registry)
  const netherrack = registry.blocksByName.netherrack.id
  const bedrock = registry.blocksByName.bedrock.id
  const biome = registry.biomesByName.nether_wastes.id
  return function generateChunk () {
    const chunk = new Chunk()
    const pos = new Vec3(0, 0, 0)
    for (let lx = 0; lx < 16; lx++) {
      for (let lz = 0; lz < 16; lz++) {
        for (let y = 0; y < 128; y++) {
          pos.set(lx, y, lz)
          if (y === 0 || y === 127) chunk.setBlockType(pos, bedrock)
          else if (y <= 40) chunk.setBlockType(pos, netherrack)
          chunk.setBiome(pos, biome)
        }
      }
    }
    return chunk
  }
}

module.exports = overworld
module.exports.nether = nether
module.exports.biomeAt = biomeAt
