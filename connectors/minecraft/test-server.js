#!/usr/bin/env node
'use strict'
// A scriptable flying-squid server for metabgm-edge's Minecraft tests (loopback only).
//
//   node test-server.js [--port 0] [--version 1.16.5] [--online-mode]
//
// stdout: one JSON object per line: {"event":"listening","port":N,"version":"1.16.5"},
//   {"event":"player_joined","username":...}, {"event":"player_left",...}, and one reply per
//   command: {"id":..., "ok":true, ...} or {"id":..., "ok":false, "error":"..."}.
// stdin: one JSON command per line, {"id": 1, "cmd": NAME, ...}; the server exits when stdin closes.
// A command about "the player" acts on the one named by "username" when it is given, else on the
// first player who joined.
//   time {ticks}                  set the time of day (the daylight cycle is stopped)
//   rain {on}, thunder {on}       raw game_state_change packets (flying-squid's /weather is inverted)
//   spawn_mob {name, dx, dy, dz}  a mob at the player's position + (dx, dy, dz)
//   remove_mob {entity}           despawn a mob spawned before
//   damage {amount, status}       a health drop, after entity_status STATUS if given (as vanilla does)
//   set_block {x, y, z, name}     change one block (a block_change packet)
//   food {food, saturation}       set food and saturation
//   heal {}                        health back to 20
//   teleport {x, y, z}            move the player (and send the chunks there, as vanilla does)
//   fire {on}                     the player's on-fire flag (entity_metadata)
//   world {name}                  "nether" or "overworld"
//   player {}                     the player's position, health and world
//   kick {username}               disconnect that player (every player when no username is given)
//   players {}                    the usernames of the players on the server
//
// The world is flat (grass at y=4, players stand at y=5) with biomes by x: forest for
// -256 <= x < 256, desert for x >= 256, snowy_tundra for x < -256. Near the spawn: a water pool
// (x 32..39, z 32..39), a lava pool (x 48..55, z 32..39) and a roofed "cave" (x 32..47,
// z -48..-33, stone from y=8 to y=20). The nether is netherrack with the nether_wastes biome.

const path = require('path')
const readline = require('readline')
const { PassThrough } = require('stream')

// stdin and stdout belong to the control channel. flying-squid writes its log and a prompt to
// stdout and reads console commands from stdin: send its writes to stderr and give it a dummy
// stdin, before it is loaded.
const control = process.stdin
const writeOut = process.stdout.write.bind(process.stdout)
process.stdout.write = (...args) => process.stderr.write(...args)
Object.defineProperty(process, 'stdin', { value: new PassThrough(), configurable: true })

const { Vec3 } = require('vec3')
const mcServer = require('flying-squid')

function arg (name, fallback) {
  const i = process.argv.indexOf('--' + name)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback
}

const version = arg('version', '1.16.5')
const port = Number(arg('port', '0'))
const onlineMode = process.argv.includes('--online-mode')

// The nether generator is looked up by name when the world plugin starts: replace it with one
// that also sets the nether biome (flying-squid's sets none, which reads as "ocean").
mcServer.generations.nether = require(path.join(__dirname, 'test-world.js')).nether

function out (obj) {
  writeOut(JSON.stringify(obj) + '\n')
}

const serv = mcServer.createMCServer({
  'online-mode': onlineMode,
  host: '127.0.0.1',
  port,
  version,
  logging: false,
  gameMode: 0,
  difficulty: 1,
  'max-players': 8,
  'view-distance': 3,
  'everybody-op': true,
  'max-entities': 100,
  kickTimeout: 10000,
  plugins: {},
  motd: 'metabgm-edge test server',
  'player-list-text': { header: { text: 'metabgm-edge' }, footer: { text: 'test' } },
  generation: { name: path.join(__dirname, 'test-world.js'), options: { seed: 7 } }
})

serv.on('error', (err) => out({ event: 'error', error: String(err && err.message) }))
serv.on('listening', (p) => out({ event: 'listening', port: p, version }))
serv.on('login', (player) => {
  out({ event: 'player_joined', username: player.username })
  player.on('disconnected', () => out({ event: 'player_left', username: player.username }))
})

// flying-squid ends a login (and a world change) at the client's first 'flying' or 'look' packet,
// and a login then sends the login position again, undoing any teleport made before. A vanilla
// client sends such packets all the time; mineflayer only when its on-ground flag or its view
// changes: maybe never (a world change that never answers), maybe at any later moment (a
// teleport undone seconds after it was made). Here the wait ends at the client's first movement
// packet of any kind, or after a second, so every login ends soon after spawning. Moves wait for
// it (and a little more, for the login position to arrive).
serv.on('newPlayer', (player) => {
  let loggedIn
  player.loginDone = new Promise((resolve) => { loggedIn = resolve })
  let first = true
  player.waitPlayerLogin = () => {
    const moved = new Promise((resolve) => {
      const events = ['flying', 'look', 'position', 'position_look']
      const done = () => {
        clearTimeout(timer)
        for (const e of events) player._client.removeListener(e, done)
        resolve()
      }
      const timer = setTimeout(done, 1000)
      for (const e of events) player._client.on(e, done)
    })
    if (first) moved.then(() => setTimeout(loggedIn, 250))
    first = false
    return moved
  }
})

async function settled (player) {
  if (player.loginDone) await player.loginDone
  return player
}

const mobs = new Map()

function thePlayer (username) {
  const player = username === undefined ? serv.players[0] : serv.players.find(p => p.username === username)
  if (!player) throw new Error(username === undefined ? 'no player is connected' : `${username} is not connected`)
  return player
}

const commands = {
  time ({ ticks }) {
    serv.doDaylightCycle = false
    serv.setTime(Number(ticks))
    return { ticks: serv.time }
  },
  rain ({ on }) {
    // 1.16: reason 2 = begin raining, 1 = end raining, 7 = rain level (0..1)
    serv._writeAll('game_state_change', { reason: on ? 2 : 1, gameMode: 0 })
    serv._writeAll('game_state_change', { reason: 7, gameMode: on ? 1 : 0 })
    return {}
  },
  thunder ({ on }) {
    serv._writeAll('game_state_change', { reason: 8, gameMode: on ? 1 : 0 })
    return {}
  },
  spawn_mob ({ name, dx = 3, dy = 0, dz = 0, username }) {
    const player = thePlayer(username)
    const entity = serv.registry.entitiesByName[name]
    if (!entity) throw new Error('unknown mob ' + name)
    const mob = serv.spawnMob(entity.id, player.world, player.position.offset(dx, dy, dz))
    mobs.set(mob.id, mob)
    return { entity: mob.id }
  },
  remove_mob ({ entity }) {
    const mob = mobs.get(entity)
    if (!mob) throw new Error('no mob ' + entity)
    serv.destroyEntity(mob)
    mobs.delete(entity)
    return {}
  },
  damage ({ amount = 4, status = null, username }) {
    const player = thePlayer(username)
    // A vanilla server tells the victim how it was hurt (entity_status 2 hurt, 37 burning, ...)
    // just before the health drop; flying-squid sends no such event by itself.
    if (status !== null) player._client.write('entity_status', { entityId: player.id, entityStatus: status })
    player.updateHealth(Math.max(0, player.health - amount))
    return { health: player.health }
  },
  heal ({ username }) {
    const player = thePlayer(username)
    player.updateHealth(20)
    return { health: player.health }
  },
  food ({ food, saturation = 0, username }) {
    const player = thePlayer(username)
    player.foodSaturation = saturation
    player.updateFood(food)
    return { food: player.food }
  },
  async teleport ({ x, y, z, username }) {
    const player = await settled(thePlayer(username))
    await player.teleport(new Vec3(x, y, z))
    // flying-squid sends chunks only when a player walks more than 16 blocks; a vanilla server
    // sends them on a teleport too. Send the player's own column first, then the rest.
    const cx = Math.floor(x / 16)
    const cz = Math.floor(z / 16)
    if (serv._worldLoadPlayerChunk(cx, cz, player)) player.sendChunk(cx, cz, await player.world.getColumn(cx, cz))
    // Wait for the rest too: while flying-squid streams chunks it ignores the client's moves, and
    // a move the client sent before the teleport would otherwise unload the chunks around the target.
    await player.worldSendRestOfChunks()
    return { position: player.position }
  },
  async set_block ({ x, y, z, name, username }) {
    const player = thePlayer(username)
    const block = serv.registry.blocksByName[name]
    if (!block) throw new Error('unknown block ' + name)
    await serv.setBlock(player.world, new Vec3(x, y, z), block.defaultState ?? block.minStateId)
    return {}
  },
  fire ({ on, username }) {
    const player = thePlayer(username)
    player._client.write('entity_metadata', {
      entityId: player.id,
      metadata: [{ key: 0, type: 0, value: on ? 0x01 : 0 }]
    })
    return {}
  },
  async world ({ name, username }) {
    const player = await settled(thePlayer(username))
    if (name === 'nether') await player.changeWorld(serv.netherworld, { dimension: -1 })
    else if (name === 'overworld') await player.changeWorld(serv.overworld, { dimension: 0 })
    else throw new Error('world must be nether or overworld')
    return { position: player.position }
  },
  player ({ username }) {
    const player = thePlayer(username)
    return {
      position: player.position,
      health: player.health,
      food: player.food,
      world: player.world === serv.netherworld ? 'nether' : 'overworld'
    }
  },
  kick ({ username }) {
    for (const player of [...serv.players]) {
      if (username === undefined || player.username === username) player.kick('kicked by the test')
    }
    return {}
  },
  players () {
    return { usernames: serv.players.map(p => p.username) }
  }
}

const rl = readline.createInterface({ input: control })
rl.on('line', async (line) => {
  if (!line.trim()) return
  let msg
  try {
    msg = JSON.parse(line)
  } catch (err) {
    out({ ok: false, error: 'not JSON: ' + err.message })
    return
  }
  const handler = commands[msg.cmd]
  if (!handler) {
    out({ id: msg.id, ok: false, error: 'unknown command ' + msg.cmd })
    return
  }
  try {
    const result = await handler(msg)
    out({ id: msg.id, ok: true, ...result })
  } catch (err) {
    out({ id: msg.id, ok: false, error: String(err && err.message) })
  }
})
rl.on('close', () => process.exit(0))
process.on('SIGTERM', () => process.exit(0))
