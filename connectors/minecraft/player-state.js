'use strict'
// The player's state, read from the packets of one Minecraft session (Java Edition, 1.16 to 1.20.1).
//
// PlayerState is fed every interesting packet in both directions (server -> client: the world as
// the player sees it; client -> server: what the player does) and answers message(): one object of
// metabgm-edge's live-state protocol (metabgm_edge/state.py), or null while nothing is known yet.
// It keeps the chunks around the player as raw packets and parses them only when a block or a
// biome there is asked for.

const crypto = require('crypto')
const { Vec3 } = require('vec3')
const nbt = require('prismarine-nbt')

const HOSTILE_EXTRA = new Set([
  'hoglin', 'zoglin', 'piglin', 'piglin_brute', 'warden', 'breeze', 'bogged', 'creaking'
])
const WATER_BLOCKS = new Set(['water', 'bubble_column', 'seagrass', 'tall_seagrass', 'kelp', 'kelp_plant'])
const RANGED_HOSTILES = new Set(['skeleton', 'stray', 'pillager', 'blaze', 'ghast', 'witch', 'evoker', 'bogged'])
const HURT_CAUSES = { 33: 'thorns', 36: 'drowning', 37: 'fire', 44: 'sweet_berry_bush' }
const GAME_MODES = ['survival', 'creative', 'adventure', 'spectator']
const POSES = ['standing', 'fall_flying', 'sleeping', 'swimming', 'spin_attack', 'crouching', 'long_jumping', 'dying']
const MELEE_RANGE = 6 // blocks: a hit with a hostile this close is blamed on it
const RANGED_RANGE = 24
const MAX_HOSTILES = 16
const CHUNK_KEEP_RADIUS = 12 // columns kept around the player (a view distance of 12)
const MAX_COLUMNS = 2048
const EYE_HEIGHT = 1.62

function toNumber (v) {
  if (typeof v === 'number') return v
  if (typeof v === 'bigint') return Number(v)
  if (Array.isArray(v) && v.length === 2) return v[0] * 4294967296 + (v[1] >>> 0) // protodef i64 [hi, lo]
  if (v && typeof v.valueOf === 'function') return Number(v.valueOf())
  return NaN
}

function toBigInt (v) {
  if (typeof v === 'bigint') return BigInt.asUintN(64, v)
  if (typeof v === 'number' && Number.isFinite(v)) return BigInt.asUintN(64, BigInt(Math.trunc(v)))
  if (Array.isArray(v) && v.length === 2) return BigInt.asUintN(64, (BigInt(v[0]) << 32n) | BigInt(v[1] >>> 0))
  return null
}

function finite (v, fallback) {
  return Number.isFinite(v) ? v : fallback
}

function round (v, digits = 2) {
  const f = 10 ** digits
  return Math.round(v * f) / f
}

function clamp (v, lo, hi) {
  return Math.min(hi, Math.max(lo, v))
}

function shortName (name) {
  return String(name).replace(/^minecraft:/, '').slice(0, 64)
}

// "overworld", "the_nether" or "the_end" (Minecraft's dimension keys), else the world's own name.
function classifyDimension (name) {
  if (typeof name !== 'string' || !name) return null
  const n = name.toLowerCase()
  if (n.includes('nether')) return 'the_nether'
  if (n.endsWith('the_end') || n.endsWith(':end') || n === 'end' || n.endsWith('_end')) return 'the_end'
  if (n.includes('overworld')) return 'overworld'
  return null
}

function readVarInt (buf, offset) {
  let value = 0
  let size = 0
  let byte
  do {
    if (offset + size >= buf.length) return null
    byte = buf[offset + size]
    value |= (byte & 0x7f) << (7 * size)
    size++
    if (size > 5) return null
  } while (byte & 0x80)
  return { value, size }
}

// Packet id -> name for one protocol state and direction, from minecraft-data.
function packetNames (registry, direction) {
  const packet = registry.protocol.play[direction].types.packet
  const mapper = packet[1][0].type[1].mappings
  const names = new Map()
  for (const [id, name] of Object.entries(mapper)) names.set(parseInt(id, 16), name)
  return names
}

class ChunkStore {
  // Columns kept as the raw packets and block changes that built them, parsed on first use. Only
  // the columns next to the player stay parsed (a parsed column takes far more memory).
  constructor (registry) {
    this.registry = registry
    this.Chunk = require('prismarine-chunk')(registry)
    this.columns = new Map()
    this.minY = 0
    this.height = 256
    this.skyLight = true
    this.oldChunkFormat = registry.version['<']('1.17')
  }

  clear () {
    this.columns.clear()
  }

  addRaw (raw, idSize, parse) {
    if (raw.length < idSize + 8) return
    const x = raw.readInt32BE(idSize)
    const z = raw.readInt32BE(idSize + 4)
    const key = x + ',' + z
    // Before 1.17 a map_chunk can update only some sections of a loaded column (groundUp false).
    const full = !this.oldChunkFormat || raw[idSize + 8] === 1
    let entry = this.columns.get(key)
    if (!entry || full) {
      entry = { x, z, ops: [], column: null, pinned: false, parse }
      this.columns.delete(key)
      this.columns.set(key, entry)
    }
    this._record(entry, { raw })
    if (this.columns.size > MAX_COLUMNS) this.columns.delete(this.columns.keys().next().value)
  }

  unload (x, z) {
    this.columns.delete(x + ',' + z)
  }

  keepAround (cx, cz) {
    for (const [key, entry] of this.columns) {
      const far = Math.max(Math.abs(entry.x - cx), Math.abs(entry.z - cz))
      if (far > CHUNK_KEEP_RADIUS) this.columns.delete(key)
      else if (far > 1 && entry.column && !entry.pinned) entry.column = null
    }
  }

  setBlock (x, y, z, stateId) {
    const entry = this.columns.get((x >> 4) + ',' + (z >> 4))
    if (entry) this._record(entry, { block: [x & 15, y, z & 15, stateId] })
  }

  _record (entry, op) {
    if (entry.column) this._apply(entry, op)
    if (entry.pinned) return
    entry.ops.push(op)
    if (entry.ops.length > 4096) {
      // A busy column (a redstone clock): keep it parsed for good instead of its history.
      if (!entry.column) this._parse(entry)
      entry.pinned = true
      entry.ops = []
    }
  }

  column (x, z) {
    const entry = this.columns.get((x >> 4) + ',' + (z >> 4))
    if (!entry) return null
    if (!entry.column) this._parse(entry)
    return entry.column
  }

  _parse (entry) {
    const column = new this.Chunk({ minY: this.minY, worldHeight: this.height })
    entry.column = column
    try {
      for (const op of entry.ops) this._apply(entry, op)
    } catch (err) {
      this.columns.delete(entry.x + ',' + entry.z)
      entry.column = null
      throw err
    }
  }

  _apply (entry, op) {
    if (op.block) {
      const [x, y, z, stateId] = op.block
      entry.column.setBlockStateId(new Vec3(x, y, z), stateId)
      return
    }
    const packet = entry.parse(op.raw).data.params
    if (!packet.bitMap && packet.groundUp) return // an empty column (unloads it before 1.14)
    entry.column.load(packet.chunkData, packet.bitMap, this.skyLight, packet.groundUp)
    if (packet.biomes !== undefined) entry.column.loadBiomes(packet.biomes)
  }
}

class PlayerState {
  constructor (registry, options = {}) {
    this.registry = registry
    this.hostileRadius = options.hostileRadius ?? 32
    this.attackWindow = options.attackWindow ?? 10
    this.now = options.now ?? (() => Date.now() / 1000)
    this.chunks = new ChunkStore(registry)
    this.mapChunkId = null
    this.changed = false
    this.reset()
    this.username = options.username ?? null
  }

  reset () {
    this.loggedIn = false
    this.entityId = null
    this.dimension = 'overworld'
    this.gameMode = null
    this.ticks = null
    this.raining = false
    this.rainLevel = null
    this.thunderLevel = 0
    this.health = null
    this.maxHealth = 20
    this.food = null
    this.saturation = null
    this.pos = null
    this.onGround = true
    this.track = [] // [t, x, y, z] of recent positions, for the speed
    this.entities = new Map()
    this.attacks = [] // [t, damage, attacker]
    this.lastHurt = null // [t, cause] from entity_status / damage_event
    this.flags = { on_fire: false, sneaking: false, sprinting: false, swimming: false, fall_flying: false }
    this.pose = 'standing'
    this.flying = false
    this.vehicle = null
    this.lastBiome = null
    this.chunks.clear()
  }

  // ---- server -> client ----
  onServerPacket (name, p) {
    const handler = this['s_' + name]
    if (handler) handler.call(this, p)
  }

  // ---- client -> server ----
  onClientPacket (name, p) {
    const handler = this['c_' + name]
    if (handler) handler.call(this, p)
  }

  onMapChunkRaw (raw, idSize, parse) {
    this.chunks.addRaw(raw, idSize, parse)
    if (this.pos) {
      const cx = Math.floor(this.pos.x) >> 4
      const cz = Math.floor(this.pos.z) >> 4
      if (raw.readInt32BE(idSize) === cx && raw.readInt32BE(idSize + 4) === cz) this.changed = true
    }
  }

  _spawnInfo (p) {
    const info = p.worldState || p
    const fromWorld = classifyDimension(info.worldName ?? info.name)
    let fromType = null
    if (typeof info.dimension === 'string') fromType = classifyDimension(info.dimension)
    else if (typeof info.worldType === 'string') fromType = classifyDimension(info.worldType)
    else if (info.dimension && typeof info.dimension === 'object') {
      try {
        const dim = nbt.simplify(info.dimension)
        fromType = classifyDimension(dim.effects)
        if (this.registry.supportFeature('dimensionDataIsAvailable')) {
          this.chunks.minY = dim.min_y ?? 0
          this.chunks.height = dim.height ?? 256
        }
      } catch { /* keep the defaults */ }
    }
    this.dimension = fromWorld ?? fromType ?? shortName(info.worldName ?? info.name ?? 'overworld')
    if (this.registry.supportFeature('dimensionDataInCodec')) {
      const type = typeof info.worldType === 'string' ? info.worldType : info.dimension
      const dim = typeof type === 'string' ? this.registry.dimensionsByName?.[shortName(type)] : null
      if (dim) {
        this.chunks.minY = dim.minY
        this.chunks.height = dim.height
      }
    }
    this.chunks.skyLight = this.dimension === 'overworld'
    const mode = info.gameMode ?? info.gamemode
    if (typeof mode === 'number' && mode >= 0) this.gameMode = GAME_MODES[mode] ?? null
    else if (typeof mode === 'string') this.gameMode = mode
  }

  s_login (p) {
    const username = this.username
    this.reset()
    this.username = username
    this.loggedIn = true
    this.entityId = p.entityId
    if (p.dimensionCodec) {
      try {
        this.registry.loadDimensionCodec(p.dimensionCodec)
      } catch { /* the static biome table stays */ }
    }
    this._spawnInfo(p)
    this.changed = true
  }

  s_respawn (p) {
    const before = this.dimension
    this._spawnInfo(p)
    this.entities.clear()
    this.chunks.clear()
    this.vehicle = null
    this.track = []
    if (before !== this.dimension) this.lastBiome = null
    this.health = this.health !== null && this.health <= 0 ? null : this.health
    this.changed = true
  }

  s_update_health (p) {
    const health = finite(p.health, null)
    if (health === null) return
    const before = this.health
    if (before !== null && health < before - 1e-6) {
      this._recordDamage(before - health)
    }
    this.health = health
    if (Number.isFinite(p.food)) this.food = p.food
    if (Number.isFinite(p.foodSaturation)) this.saturation = p.foodSaturation
    this.changed = true
  }

  s_entity_update_attributes (p) {
    if (p.entityId !== this.entityId) return
    for (const prop of p.properties || []) {
      const key = String(prop.key)
      if (/(^|[:.])(generic\.)?max_health$/.test(key) || key === 'generic.maxHealth') {
        let value = finite(prop.value, 20)
        for (const m of prop.modifiers || []) {
          if (m.operation === 0) value += finite(m.amount, 0)
        }
        this.maxHealth = clamp(value, 1, 1024)
        this.changed = true
      }
    }
  }

  s_position (p) {
    const flags = p.flags
    const rel = (bit, field) => {
      if (typeof flags === 'number') return (flags & bit) !== 0
      return !!(flags && flags[field])
    }
    const old = this.pos || new Vec3(0, 0, 0)
    const x = rel(0x01, 'x') ? old.x + p.x : p.x
    const y = rel(0x02, 'y') ? old.y + p.y : p.y
    const z = rel(0x04, 'z') ? old.z + p.z : p.z
    this._moveTo(x, y, z, true)
  }

  s_update_time (p) {
    const time = toNumber(p.time)
    if (!Number.isFinite(time)) return
    const ticks = Math.abs(time) % 24000
    if (this.ticks === null || phase(ticks) !== phase(this.ticks)) this.changed = true
    this.ticks = ticks
  }

  s_game_state_change (p) {
    const reason = p.reason
    const value = p.gameMode
    if (reason === 'start_raining' || reason === 1) this.raining = true
    else if (reason === 'stop_raining' || reason === 2) {
      this.raining = false
      this.rainLevel = 0
      this.thunderLevel = 0
    } else if (reason === 'rain_level_change' || reason === 7) {
      this.rainLevel = clamp(finite(value, 0), 0, 1)
      this.raining = this.rainLevel > 0.2 // the vanilla client's threshold
    } else if (reason === 'thunder_level_change' || reason === 8) {
      this.thunderLevel = clamp(finite(value, 0), 0, 1)
    } else if (reason === 'change_game_mode' || reason === 3) {
      this.gameMode = GAME_MODES[Math.round(value)] ?? this.gameMode
    } else {
      return
    }
    this.changed = true
  }

  s_map_chunk () { /* handled raw, see onMapChunkRaw */ }

  s_unload_chunk (p) {
    this.chunks.unload(p.chunkX, p.chunkZ)
  }

  s_block_change (p) {
    const loc = p.location
    if (!loc) return
    this.chunks.setBlock(loc.x, loc.y, loc.z, p.type)
    this._maybeNearPlayer(loc.x, loc.y, loc.z)
  }

  s_multi_block_change (p) {
    if (p.chunkCoordinates) { // 1.16.2+
      const { x: cx, y: sy, z: cz } = p.chunkCoordinates
      for (const record of p.records || []) {
        const r = toBigInt(record)
        if (r === null) continue
        const stateId = Number(r >> 12n)
        const local = Number(r & 0xfffn)
        const x = cx * 16 + ((local >> 8) & 15)
        const z = cz * 16 + ((local >> 4) & 15)
        const y = sy * 16 + (local & 15)
        this.chunks.setBlock(x, y, z, stateId)
        this._maybeNearPlayer(x, y, z)
      }
    } else if (p.records) { // before 1.16.2
      for (const rec of p.records) {
        const x = p.chunkX * 16 + ((rec.horizontalPos >> 4) & 15)
        const z = p.chunkZ * 16 + (rec.horizontalPos & 15)
        this.chunks.setBlock(x, rec.y, z, rec.blockId)
        this._maybeNearPlayer(x, rec.y, z)
      }
    }
  }

  _maybeNearPlayer (x, y, z) {
    if (this.pos && Math.abs(x - this.pos.x) < 2 && Math.abs(z - this.pos.z) < 2) this.changed = true
  }

  _entityName (typeId) {
    const entity = this.registry.entities?.[typeId]
    return entity ? entity.name : null
  }

  _isHostile (name) {
    if (!name) return false
    if (HOSTILE_EXTRA.has(name)) return true
    const entity = this.registry.entitiesByName?.[name]
    return !!entity && (entity.type === 'hostile' || entity.category === 'Hostile mobs')
  }

  _addEntity (p) {
    const name = this._entityName(p.type)
    if (!name) return
    this.entities.set(p.entityId, { name, x: p.x, y: p.y, z: p.z, hostile: this._isHostile(name) })
    if (this._isHostile(name)) this.changed = true
  }

  s_spawn_entity_living (p) { this._addEntity(p) }
  s_spawn_entity (p) { this._addEntity(p) }

  s_entity_destroy (p) {
    for (const id of p.entityIds || []) this._removeEntity(id)
  }

  s_destroy_entity (p) { // 1.17.0
    this._removeEntity(p.entityId)
  }

  _removeEntity (id) {
    const e = this.entities.get(id)
    if (e && e.hostile) this.changed = true
    this.entities.delete(id)
  }

  _moveEntity (p, absolute) {
    const e = this.entities.get(p.entityId)
    if (!e) return
    if (absolute) {
      e.x = p.x
      e.y = p.y
      e.z = p.z
    } else {
      e.x += finite(p.dX, 0) / 4096
      e.y += finite(p.dY, 0) / 4096
      e.z += finite(p.dZ, 0) / 4096
    }
  }

  s_rel_entity_move (p) { this._moveEntity(p, false) }
  s_entity_move_look (p) { this._moveEntity(p, false) }
  s_entity_teleport (p) { this._moveEntity(p, true) }
  s_sync_entity_position (p) { this._moveEntity(p, true) }

  s_entity_status (p) {
    if (p.entityId === this.entityId) {
      const status = p.entityStatus
      if (status === 2 || HURT_CAUSES[status]) this.lastHurt = [this.now(), HURT_CAUSES[status] ?? null]
      return
    }
    if (p.entityStatus === 3) this._removeEntity(p.entityId) // died
  }

  s_damage_event (p) { // 1.19.4+
    if (p.entityId !== this.entityId) return
    const source = this.entities.get((p.sourceCauseId ?? 0) - 1)
    this.lastHurt = [this.now(), source ? source.name : null]
  }

  s_entity_metadata (p) {
    if (p.entityId !== this.entityId) return
    for (const item of p.metadata || []) {
      if (item.key === 0 && typeof item.value === 'number') {
        const f = item.value
        this.flags.on_fire = (f & 0x01) !== 0
        this.flags.sneaking = (f & 0x02) !== 0
        this.flags.sprinting = (f & 0x08) !== 0
        this.flags.swimming = (f & 0x10) !== 0
        this.flags.fall_flying = (f & 0x80) !== 0
        this.changed = true
      } else if (item.key === 6 && (item.type === 18 || item.type === 'pose' || item.type === 'entity_pose')) {
        this.pose = typeof item.value === 'number' ? POSES[item.value] ?? 'standing' : String(item.value)
        this.changed = true
      }
    }
  }

  s_abilities (p) {
    if (typeof p.flags === 'number') {
      this.flying = (p.flags & 0x02) !== 0
      this.changed = true
    }
  }

  s_set_passengers (p) {
    if ((p.passengers || []).includes(this.entityId)) this.vehicle = p.entityId
    else if (this.vehicle === p.entityId) this.vehicle = null
    this.changed = true
  }

  c_position (p) { this._moveTo(p.x, p.y, p.z, false, p.onGround) }
  c_position_look (p) { this._moveTo(p.x, p.y, p.z, false, p.onGround) }
  c_flying (p) { if (typeof p.onGround === 'boolean') this.onGround = p.onGround }
  c_vehicle_move (p) { this._moveTo(p.x, p.y, p.z, false) }

  c_entity_action (p) {
    const action = typeof p.actionId === 'number'
      ? ['start_sneaking', 'stop_sneaking', 'stop_sleeping', 'start_sprinting', 'stop_sprinting'][p.actionId]
      : p.actionId
    if (action === 'start_sneaking') this.flags.sneaking = true
    else if (action === 'stop_sneaking') this.flags.sneaking = false
    else if (action === 'start_sprinting') this.flags.sprinting = true
    else if (action === 'stop_sprinting') this.flags.sprinting = false
    else return
    this.changed = true
  }

  c_player_input (p) { // 1.21.2+: sneaking moved here
    const shift = p.inputs?.shift ?? (typeof p.flags === 'number' ? (p.flags & 0x20) !== 0 : undefined)
    if (typeof shift === 'boolean' && shift !== this.flags.sneaking) {
      this.flags.sneaking = shift
      this.changed = true
    }
  }

  c_abilities (p) {
    if (typeof p.flags === 'number') {
      this.flying = (p.flags & 0x02) !== 0
      this.changed = true
    }
  }

  _moveTo (x, y, z, teleport, onGround) {
    if (![x, y, z].every(Number.isFinite)) return
    const now = this.now()
    const before = this.pos
    this.pos = new Vec3(x, y, z)
    if (typeof onGround === 'boolean') this.onGround = onGround
    if (teleport) this.track = []
    this.track.push([now, x, y, z])
    while (this.track.length > 2 && this.track[0][0] < now - 1.0) this.track.shift()
    if (!before || Math.floor(before.x) !== Math.floor(x) || Math.floor(before.z) !== Math.floor(z) ||
        Math.floor(before.y) !== Math.floor(y)) {
      this.changed = true
      if (!before || (Math.floor(before.x) >> 4) !== (Math.floor(x) >> 4) || (Math.floor(before.z) >> 4) !== (Math.floor(z) >> 4)) {
        this.chunks.keepAround(Math.floor(x) >> 4, Math.floor(z) >> 4)
      }
    }
  }

  _recordDamage (amount) {
    const now = this.now()
    let attacker = null
    if (this.lastHurt && now - this.lastHurt[0] < 1.0 && this.lastHurt[1]) attacker = this.lastHurt[1]
    if (!attacker && this.pos) {
      // A hit with a hostile mob next to the player is blamed on it (melee); a ranged mob
      // counts from farther away.
      let best = null
      for (const e of this.entities.values()) {
        if (!e.hostile) continue
        const d = this.pos.distanceTo(new Vec3(e.x, e.y, e.z))
        const reach = RANGED_HOSTILES.has(e.name) ? RANGED_RANGE : MELEE_RANGE
        if (d <= reach && (!best || d < best[0])) best = [d, e.name]
      }
      if (best) attacker = best[1]
    }
    if (!attacker && this.flags.on_fire) attacker = 'fire'
    this.attacks.push([now, amount, attacker])
  }

  _block (x, y, z) {
    const column = this.chunks.column(Math.floor(x), Math.floor(z))
    if (!column) return null
    const by = Math.floor(y)
    if (by < this.chunks.minY || by >= this.chunks.minY + this.chunks.height) return null
    const stateId = column.getBlockStateId(new Vec3(Math.floor(x) & 15, by, Math.floor(z) & 15))
    return this.registry.blocksByStateId[stateId] ?? null
  }

  _biome () {
    const column = this.chunks.column(Math.floor(this.pos.x), Math.floor(this.pos.z))
    if (!column) return null
    const y = clamp(Math.floor(this.pos.y), this.chunks.minY, this.chunks.minY + this.chunks.height - 1)
    const id = column.getBiome(new Vec3(Math.floor(this.pos.x) & 15, y, Math.floor(this.pos.z) & 15))
    const biome = this.registry.biomes?.[id]
    return biome || null
  }

  _depth () {
    // Solid blocks above the player's head up to the top of the world (leaves do not count):
    // 0 under the open sky, large deep in a cave.
    const top = this.chunks.minY + this.chunks.height
    let depth = 0
    for (let y = Math.floor(this.pos.y + EYE_HEIGHT) + 1; y < top; y++) {
      const block = this._block(this.pos.x, y, this.pos.z)
      if (block && block.boundingBox === 'block' && !block.name.endsWith('leaves')) depth++
    }
    return depth
  }

  _speed (now) {
    const track = this.track.filter(s => s[0] >= now - 1.0)
    if (track.length < 2) return { speed: 0, vy: 0 }
    const first = track[0]
    const last = track[track.length - 1]
    if (now - last[0] > 0.5) return { speed: 0, vy: 0 } // no movement reported lately
    const dt = Math.max(now - first[0], 0.25)
    const dx = last[1] - first[1]
    const dy = last[2] - first[2]
    const dz = last[3] - first[3]
    return { speed: Math.sqrt(dx * dx + dy * dy + dz * dz) / dt, vy: dy / dt }
  }

  // One live-state message, or null while the player is not in the world yet.
  message () {
    if (!this.loggedIn || !this.pos) return null
    const now = this.now()
    let biome = null
    let feet = null
    let head = null
    let depth = 0
    try {
      biome = this._biome()
      feet = this._block(this.pos.x, this.pos.y + 0.1, this.pos.z)
      head = this._block(this.pos.x, this.pos.y + EYE_HEIGHT, this.pos.z)
      depth = this._depth()
    } catch (err) {
      this.onError?.(err)
    }
    if (biome) this.lastBiome = biome
    const b = biome || this.lastBiome
    const biomeName = b ? shortName(b.name) : 'unknown'
    const temperature = b ? clamp(finite(b.temperature, 0.8), -10, 10) : 0.8
    const precipitation = b ? (b.precipitation ?? (b.has_precipitation === 0 || b.has_precipitation === false ? 'none' : 'rain')) : 'rain'

    const inWater = [feet, head].some(bl => bl && WATER_BLOCKS.has(bl.name))
    const inLava = [feet, head].some(bl => bl && bl.name === 'lava')
    const { speed, vy } = this._speed(now)

    let worldWeather = 'clear'
    if (this.raining) worldWeather = this.thunderLevel > 0.9 ? 'thunder' : 'rain'
    let weather = worldWeather
    if (worldWeather !== 'clear' && (precipitation === 'none' || this.dimension !== 'overworld')) weather = 'clear'
    else if (worldWeather === 'rain' && (precipitation === 'snow' || temperature < 0.15)) weather = 'snow'

    const sleeping = this.pose === 'sleeping'
    const swimming = this.flags.swimming || this.pose === 'swimming'
    const sneaking = this.flags.sneaking || this.pose === 'crouching'
    let movement = 'still'
    if (this.vehicle !== null) movement = 'riding'
    else if (this.flying || this.flags.fall_flying) movement = 'flying'
    else if (swimming || (inWater && speed > 0.5)) movement = 'swimming'
    else if (!this.onGround && vy < -5) movement = 'falling'
    else if (sneaking && speed > 0.2) movement = 'sneaking'
    else if ((this.flags.sprinting && speed > 0.5) || speed > 5) movement = 'running'
    else if (speed > 0.3) movement = 'walking'

    const hostiles = []
    for (const e of this.entities.values()) {
      if (!e.hostile) continue
      const d = this.pos.distanceTo(new Vec3(e.x, e.y, e.z))
      if (Number.isFinite(d) && d <= this.hostileRadius) hostiles.push({ name: shortName(e.name), distance: round(d) })
    }
    hostiles.sort((a, b2) => a.distance - b2.distance)

    this.attacks = this.attacks.filter(a => now - a[0] <= this.attackWindow)
    let attacked
    if (this.attacks.length) {
      const last = this.attacks[this.attacks.length - 1]
      attacked = {
        damage: round(clamp(this.attacks.reduce((s, a) => s + a[1], 0), 0, 1e4)),
        seconds_ago: round(Math.max(0, now - last[0])),
        ...(last[2] ? { attacker: shortName(last[2]) } : {})
      }
    }

    const health = this.health === null ? this.maxHealth : this.health
    const msg = {
      v: 1,
      scene: { biome: biomeName, dimension: shortName(this.dimension) },
      time: this.ticks === null ? {} : { ticks: Math.floor(this.ticks) },
      weather: this.raining && this.rainLevel !== null && weather !== 'clear'
        ? { state: weather, intensity: round(this.rainLevel) }
        : { state: weather },
      temperature: round(temperature),
      health: { value: round(clamp(health, 0, 1e4)), max: round(clamp(this.maxHealth, 1, 1e4)) },
      hunger: { food: clamp(finite(this.food, 20), 0, 100), saturation: round(clamp(finite(this.saturation, 5), 0, 100)) },
      status: {
        on_fire: this.flags.on_fire,
        in_water: inWater,
        in_lava: inLava,
        sprinting: this.flags.sprinting,
        sneaking,
        swimming,
        flying: this.flying || this.flags.fall_flying,
        sleeping,
        riding: this.vehicle !== null,
        dead: this.health !== null && this.health <= 0
      },
      movement: { state: movement, speed: round(clamp(speed, 0, 1000)) },
      position: {
        x: round(clamp(this.pos.x, -3e7, 3e7)),
        y: round(clamp(this.pos.y, -4096, 4096)),
        z: round(clamp(this.pos.z, -3e7, 3e7)),
        depth: clamp(depth, 0, 4096)
      },
      hostiles: hostiles.slice(0, MAX_HOSTILES),
      extra: {
        connector: 'minecraft',
        ...(this.username ? { username: this.username.slice(0, 64) } : {}),
        ...(this.gameMode ? { game_mode: this.gameMode } : {}),
        world_weather: worldWeather
      }
    }
    if (attacked) msg.attacked = attacked
    return msg
  }
}

function phase (ticks) {
  const t = ticks % 24000
  if (t < 1000 || t >= 23000) return 'dawn'
  if (t < 12000) return 'day'
  if (t < 13000) return 'dusk'
  return 'night'
}

// What changes the music: a message is sent at once when this differs from the last one sent.
function signature (msg) {
  return JSON.stringify([
    msg.scene, msg.time.ticks === undefined ? null : phase(msg.time.ticks), msg.weather.state,
    msg.health, msg.hunger.food, msg.status, msg.movement.state, msg.position.depth > 0,
    msg.hostiles.map(h => [h.name, h.distance <= 8]), msg.attacked ? [msg.attacked.damage, msg.attacked.attacker] : null
  ])
}

// The protocol's player ids (metabgm_edge/state.py PLAYER_ID): they name the player's audio stream.
const PLAYER_ID = /^[A-Za-z0-9_.-]{1,64}$/

// A Minecraft username as a player id: itself when it fits, else the characters that do not fit
// replaced by "_" and 6 hex digits of the name's SHA-256 appended, so that two names that differ
// only in those characters (or a name that already looks like a mapped one) keep apart.
function playerId (username) {
  const name = String(username ?? '')
  if (PLAYER_ID.test(name)) return name
  const hash = crypto.createHash('sha256').update(name, 'utf8').digest('hex').slice(0, 6)
  const kept = Array.from(name).map(c => /^[A-Za-z0-9_.-]$/.test(c) ? c : '_').join('').slice(0, 48)
  return `${kept || 'player'}-${hash}`
}

module.exports = {
  PlayerState, ChunkStore, packetNames, readVarInt, signature, classifyDimension, toNumber, playerId, PLAYER_ID
}
