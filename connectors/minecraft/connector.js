#!/usr/bin/env node
'use strict'
// metabgm-edge's Minecraft connector: a proxy that the players' own Minecraft clients join through.
//
//   node connector.js --server HOST:PORT [--listen 127.0.0.1:25566] [--version auto]
//                     [--rate 5] [--hostile-radius 32] [--attack-window 10]
//                     [--max-players 64] [--forget 60] [--parent-pipe]
//
// Every player adds LISTEN as a server in Minecraft and joins it; for each one the connector joins
// SERVER with that player's name (one upstream connection per player) and passes every packet
// through unchanged, both ways. From those packets it reads each player's state and writes it to
// stdout as metabgm-edge's live-state protocol, one JSON object per line tagged with
// "player": the player's id, RATE times a second while that player is in the world and at once
// when something that changes their music happens (see player-state.js). Nothing is written for a
// player who is not in the world.
//
// The player id is the Minecraft username when it fits the protocol's ids (1-64 of A-Z a-z 0-9
// _ . -, which every name Mojang hands out does); an offline-mode server may let any string in,
// and such a name is mapped to one that fits: the characters that do not fit become "_" and a
// short hash of the name follows ("Név Ü" -> "N_v__-aea9b0"), so two names never share an id.
// The "player_joined" event names both.
//
// At most MAX_PLAYERS players at once: one more is refused with a message in the game. A player
// who left keeps their place for FORGET seconds (metabgm-edge keeps their music that long, for a
// reconnect). A player who joins again under a name that is still connected (a reconnect before
// the old connection timed out) replaces the old connection, as a vanilla server does: the old
// one is ended ("you joined again from another connection"), the new one starts afresh, and no
// other player's session is touched.
//
// stderr carries one JSON object per line for events ({"event": "listening", ...},
// "waiting_for_server", "player_joined", "session_started", "session_ended", "refused", "fatal";
// the per-player ones carry "username" and "player") and plain text for anything else. With
// --parent-pipe the connector exits when stdin closes, so it never outlives the metabgm-edge
// process that started it.
//
// What works: offline-mode servers (online-mode=false), Minecraft 1.16 to 1.20.1 (tested against
// flying-squid on 1.16.5 and 1.18.2). What does not: online-mode servers (the proxy cannot log in
// to Mojang's session server for the player), and 1.20.2 or newer (their configuration phase is
// not relayed yet): both are refused with a message.

const mc = require('minecraft-protocol')
const minecraftData = require('minecraft-data')
const { PlayerState, packetNames, playerId, readVarInt, signature } = require('./player-state')

const SERVER_PACKETS = new Set([
  'login', 'respawn', 'update_health', 'entity_update_attributes', 'position', 'update_time',
  'game_state_change', 'unload_chunk', 'block_change', 'multi_block_change', 'spawn_entity_living',
  'spawn_entity', 'entity_destroy', 'destroy_entity', 'rel_entity_move', 'entity_move_look',
  'entity_teleport', 'sync_entity_position', 'entity_status', 'damage_event', 'entity_metadata',
  'abilities', 'set_passengers'
])
const CLIENT_PACKETS = new Set([
  'position', 'position_look', 'flying', 'vehicle_move', 'entity_action', 'player_input', 'abilities'
])

function parseArgs (argv) {
  const opts = {
    server: null,
    listen: '127.0.0.1:25566',
    version: 'auto',
    rate: 5,
    hostileRadius: 32,
    attackWindow: 10,
    maxPlayers: 64,
    forget: 60,
    parentPipe: false
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const next = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`)
      return argv[++i]
    }
    if (a === '--server') opts.server = next()
    else if (a === '--listen') opts.listen = next()
    else if (a === '--version') opts.version = next()
    else if (a === '--rate') opts.rate = Number(next())
    else if (a === '--hostile-radius') opts.hostileRadius = Number(next())
    else if (a === '--attack-window') opts.attackWindow = Number(next())
    else if (a === '--max-players') opts.maxPlayers = Number(next())
    else if (a === '--forget') opts.forget = Number(next())
    else if (a === '--parent-pipe') opts.parentPipe = true
    else if (a === '-h' || a === '--help') usage(null)
    else usage(`unknown argument ${a}`)
  }
  if (!opts.server) usage('--server HOST:PORT is required')
  if (!(opts.rate > 0 && opts.rate <= 50)) usage('--rate must be between 0 and 50 messages a second')
  if (!(opts.hostileRadius > 0 && opts.hostileRadius <= 256)) usage('--hostile-radius must be in (0, 256] blocks')
  if (!(opts.attackWindow > 0 && opts.attackWindow <= 600)) usage('--attack-window must be in (0, 600] seconds')
  if (!(Number.isInteger(opts.maxPlayers) && opts.maxPlayers >= 1 && opts.maxPlayers <= 4096)) {
    usage('--max-players must be a whole number from 1 to 4096')
  }
  if (!(opts.forget >= 0 && opts.forget <= 86400)) usage('--forget must be in [0, 86400] seconds')
  opts.serverHost = hostPort(opts.server, 25565)
  opts.listenHost = hostPort(opts.listen, 25566)
  return opts
}

function hostPort (text, defaultPort) {
  const m = /^\[?([^\]]*?)\]?(?::(\d+))?$/.exec(text)
  if (!m || !m[1]) usage(`cannot read ${text} as HOST:PORT`)
  const port = m[2] === undefined ? defaultPort : Number(m[2])
  if (!(port >= 0 && port < 65536)) usage(`port out of range in ${text}`)
  return { host: m[1], port }
}

function usage (error) {
  const text = 'usage: node connector.js --server HOST:PORT [--listen HOST:PORT] [--version auto|1.16.5] ' +
    '[--rate HZ] [--hostile-radius BLOCKS] [--attack-window SECONDS] [--max-players N] [--forget SECONDS] ' +
    '[--parent-pipe]'
  if (error) {
    event('fatal', { error: `${error}; ${text}` })
    process.exit(2)
  }
  process.stdout.write(text + '\n')
  process.exit(0)
}

function event (name, fields = {}) {
  process.stderr.write(JSON.stringify({ event: name, ...fields }) + '\n')
}

const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms))

// The server's version, from a status ping; retried with exponential backoff until it answers.
async function detectVersion ({ host, port }) {
  let delay = 0.5
  for (;;) {
    try {
      const status = await mc.ping({ host, port, closeTimeout: 5000, noPongTimeout: 500 })
      const protocol = status.version && status.version.protocol
      const candidates = minecraftData.postNettyVersionsByProtocolVersion.pc[protocol] || []
      const known = candidates.find(v => minecraftData(v.minecraftVersion))
      if (!known) {
        throw new FatalError(`the server speaks protocol ${protocol} (${status.version && status.version.name}), ` +
          `which this connector has no protocol data for; ${DATA_HINT.replaceAll('VERSION', status.version && status.version.name)}`)
      }
      return known.minecraftVersion
    } catch (err) {
      if (err instanceof FatalError) throw err
      event('waiting_for_server', { server: `${host}:${port}`, error: String(err.message || err), retry_in: delay })
      await sleep(delay * 1000)
      delay = Math.min(delay * 2, 15)
    }
  }
}

class FatalError extends Error {}

// What to do about a Minecraft version without protocol data: the packaged build says which data
// pack to unpack where (metabgm-edge sets this); a checkout updates its npm packages.
const DATA_HINT = process.env.METABGM_EDGE_MINECRAFT_DATA_HINT || 'pass ?version=... or update connectors/minecraft'

function checkSupported (version) {
  if (!minecraftData(version)) {
    throw new FatalError(`no protocol data for Minecraft ${version}; ${DATA_HINT.replaceAll('VERSION', version)}`)
  }
  const registry = require('prismarine-registry')(version)
  if (!registry || !registry.version) throw new FatalError(`no protocol data for Minecraft ${version}`)
  if (registry.version['<']('1.16')) {
    throw new FatalError(`Minecraft ${version} is older than this connector supports (1.16 to 1.20.1)`)
  }
  if (registry.supportFeature('hasConfigurationState')) {
    throw new FatalError(`Minecraft ${version} is not supported yet: from 1.20.2 the login has a configuration ` +
      'phase that the proxy does not relay (supported: 1.16 to 1.20.1, tested on 1.16.5 and 1.18.2)')
  }
  return registry
}

// From the moment a connection is in the play state, take its packets raw (decompressed and
// decrypted, not parsed) so that they pass through byte for byte; only the packets the state
// needs are parsed, and a packet that cannot be parsed still passes.
function tapPlay (conn, onRaw) {
  const source = conn.decompressor || conn.splitter
  source.unpipe(conn.deserializer)
  source.on('data', onRaw)
  source.resume() // unpipe() paused it
}

function parseWith (conn) {
  return (raw) => conn.deserializer.parsePacketBuffer(raw)
}

function main () {
  const opts = parseArgs(process.argv.slice(2))
  let shuttingDown = false
  const sessions = new Map() // player id -> its Session (one per player in the game)
  const left = new Map() // player id -> when its last session ended (its place is kept for --forget s)
  let server = null

  const shutdown = (code = 0) => {
    if (shuttingDown) return
    shuttingDown = true
    for (const session of [...sessions.values()]) session.close('metabgm-edge stopped its Minecraft connector')
    setTimeout(() => process.exit(code), 200).unref()
    if (server) server.close()
  }

  if (opts.parentPipe) {
    process.stdin.on('end', () => shutdown(0))
    process.stdin.on('close', () => shutdown(0))
    process.stdin.on('error', () => shutdown(0))
    process.stdin.resume()
  }
  process.on('SIGTERM', () => shutdown(0))
  process.on('SIGINT', () => shutdown(0))
  process.stdout.on('error', () => shutdown(0)) // the reader went away
  process.on('uncaughtException', (err) => {
    event('fatal', { error: String(err && err.stack ? err.stack : err) })
    process.exit(1)
  })

  const start = async () => {
    let version = opts.version
    if (version === 'auto') version = await detectVersion(opts.serverHost)
    const registry = checkSupported(version)
    const names = { toClient: packetNames(registry, 'toClient'), toServer: packetNames(registry, 'toServer') }

    server = mc.createServer({
      'online-mode': false,
      host: opts.listenHost.host,
      port: opts.listenHost.port,
      version,
      keepAlive: false,
      hideErrors: true,
      maxPlayers: opts.maxPlayers,
      motd: `metabgm-edge -> ${opts.server}`,
      errorHandler: (client, err) => {
        event('player_error', {
          ...(client.username ? { username: client.username, player: playerId(client.username) } : {}),
          error: String(err.message || err)
        })
        client.end('metabgm-edge: ' + String(err.message || err))
      }
    })
    server.on('error', (err) => {
      event('fatal', { error: `cannot listen on ${opts.listen}: ${err.message}` })
      process.exit(3)
    })
    server.on('listening', () => {
      const addr = server.socketServer.address()
      event('listening', { listen: `${addr.address}:${addr.port}`, port: addr.port, server: opts.server, version })
    })
    server.on('login', (client) => {
      if (shuttingDown) {
        client.end('metabgm-edge: the connector is stopping')
        return
      }
      const username = client.username
      const player = playerId(username)
      const now = Date.now() / 1000
      for (const [id, at] of left) if (now - at > opts.forget || sessions.has(id)) left.delete(id)
      const old = sessions.get(player)
      if (old) {
        // The same player again (a reconnect before the old connection timed out): the new
        // connection replaces the old one, as a vanilla server does.
        old.close('metabgm-edge: you joined again from another connection', 'replaced')
      } else if (!left.has(player) && sessions.size + left.size >= opts.maxPlayers) {
        const message = `metabgm-edge: this server's music is full (${opts.maxPlayers} players at once); ` +
          'try again later, or ask the operator to raise max_players'
        event('refused', { username, player, by: 'full', message })
        client.end(message)
        return
      }
      left.delete(player)
      const session = new Session(client, {
        opts,
        version,
        registry,
        names,
        player,
        onEnd: () => {
          if (sessions.get(player) !== session) return // replaced: the new session is not touched
          sessions.delete(player)
          if (session.started) left.set(player, Date.now() / 1000) // keeps its place for --forget s
        }
      })
      sessions.set(player, session)
    })

    // Per player: the steady stream, plus an early message when something that changes the music happens.
    const period = 1 / opts.rate
    setInterval(() => {
      const now = Date.now() / 1000
      for (const session of sessions.values()) {
        if (!session.playing) continue
        const due = now - session.lastSent >= period - 0.01
        if (!due && !session.state.changed) continue
        session.state.changed = false
        const msg = session.state.message()
        if (!msg) continue
        const sig = signature(msg)
        if (!due && sig === session.lastSig) continue
        msg.player = session.player
        process.stdout.write(JSON.stringify(msg) + '\n')
        session.lastSent = now
        session.lastSig = sig
      }
    }, 50)
  }

  start().catch((err) => {
    event('fatal', { error: String(err.message || err) })
    process.exit(err instanceof FatalError ? 2 : 1)
  })
}

// One player's session: their client, their own upstream connection, their own PlayerState and
// send timer (lastSent, lastSig).
class Session {
  constructor (client, { opts, version, registry, names, player, onEnd }) {
    this.client = client
    this.player = player
    this.names = names
    this.onEnd = onEnd
    this.playing = false
    this.started = false
    this.ended = false
    this.lastSent = 0
    this.lastSig = null
    this.pending = []
    this.parseErrors = new Set()
    this.state = new PlayerState(registry, {
      hostileRadius: opts.hostileRadius,
      attackWindow: opts.attackWindow,
      username: client.username
    })
    this.state.onError = (err) => this._parseError('state', err)
    const who = { username: client.username, player }
    this.who = who
    event('player_joined', { ...who, from: client.socket.remoteAddress })

    const parseFromPlayer = parseWith(client)
    tapPlay(client, (raw) => this._fromPlayer(raw, parseFromPlayer))

    const up = mc.createClient({
      host: opts.serverHost.host,
      port: opts.serverHost.port,
      username: client.username,
      version,
      auth: 'offline',
      keepAlive: false,
      hideErrors: true
    })
    this.up = up
    up.on('state', (newState) => {
      if (newState !== 'play' || this.playing) return
      const parseFromServer = parseWith(up)
      tapPlay(up, (raw) => this._fromServer(raw, parseFromServer))
      this.playing = true
      this.started = true
      for (const raw of this.pending) up.writeRaw(raw)
      this.pending = []
      event('session_started', { ...who, server: opts.server, version })
    })
    up.once('encryption_begin', () => {
      this.close(`metabgm-edge cannot join ${opts.server}: it is an online-mode server, and the connector ` +
        'can only join offline-mode servers (online-mode=false). See the README.', 'online_mode')
    })
    up.on('disconnect', (packet) => { // refused during login
      this.close(null, 'refused', packet.reason)
    })
    up.on('error', (err) => { this.lastError = String(err.message || err) })
    up.on('end', () => {
      const why = this.lastError ? ` (${this.lastError})` : ''
      this.close(this.playing
        ? `metabgm-edge: the connection to ${opts.server} was lost${why}; rejoin when the server is back`
        : `metabgm-edge cannot reach ${opts.server}${why}; is the server running?`, 'server')
    })
    client.on('end', () => this.close(null, 'player'))
    client.on('error', (err) => { this.lastError = String(err.message || err) })
  }

  _fromPlayer (raw, parse) {
    if (this.ended) return
    if (this.playing) this.up.writeRaw(raw)
    else if (this.pending.length < 1024) this.pending.push(raw)
    const id = readVarInt(raw, 0)
    if (!id) return
    const name = this.names.toServer.get(id.value)
    if (!CLIENT_PACKETS.has(name)) return
    try {
      this.state.onClientPacket(name, parse(raw).data.params)
    } catch (err) {
      this._parseError(name, err)
    }
  }

  _fromServer (raw, parse) {
    if (this.ended) return
    this.client.writeRaw(raw)
    const id = readVarInt(raw, 0)
    if (!id) return
    const name = this.names.toClient.get(id.value)
    try {
      if (name === 'map_chunk') this.state.onMapChunkRaw(raw, id.size, parse)
      else if (SERVER_PACKETS.has(name)) this.state.onServerPacket(name, parse(raw).data.params)
    } catch (err) {
      this._parseError(name, err)
    }
  }

  _parseError (name, err) {
    if (this.parseErrors.has(name)) return // once per packet kind: the packet still went through
    this.parseErrors.add(name)
    event('parse_error', {
      ...this.who, packet: name, error: String(err && err.message ? err.message : err).slice(0, 300)
    })
  }

  close (kickReason, by = 'connector', serverReason = undefined) {
    if (this.ended) return
    this.ended = true
    this.playing = false
    if (!this.client.ended) {
      if (serverReason !== undefined) this.client.end('refused by the server', serverReason)
      else if (kickReason) this.client.end(kickReason)
      else this.client.end('metabgm-edge: session ended')
    }
    if (!this.up.ended) this.up.end('metabgm-edge: the player left')
    event(by === 'online_mode' || by === 'refused' ? 'refused' : 'session_ended', {
      ...this.who,
      by,
      ...(serverReason !== undefined ? { reason: String(serverReason).slice(0, 300) } : {}),
      ...(kickReason ? { message: kickReason } : {})
    })
    this.onEnd()
  }
}

main()
