#!/usr/bin/env node
'use strict'
// The player's own Minecraft client, played by a mineflayer bot, for metabgm-edge's tests.
//
//   node test-player.js --port PORT [--host 127.0.0.1] [--username player] [--version 1.16.5]
//                       [--rejoin 1]
//
// It joins HOST:PORT (the connector's proxy) and, like a player pressing "Reconnect", joins again
// REJOIN seconds after it is disconnected (never with --rejoin 0). stdout: one JSON event per line ("spawned", "kicked", "end",
// "error") and one reply per command. stdin: one JSON command per line, {"id":1,"cmd":...}:
//   controls {forward, back, left, right, jump, sprint, sneak}   hold (true) or release keys
//   stop {}                                                      release every key
//   position {}                                                  where the bot is
// The bot exits when stdin closes.

const readline = require('readline')

const control = process.stdin
const writeOut = process.stdout.write.bind(process.stdout)
process.stdout.write = (...args) => process.stderr.write(...args) // keep stdout for our events

const mineflayer = require('mineflayer')

function arg (name, fallback) {
  const i = process.argv.indexOf('--' + name)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback
}

const options = {
  host: arg('host', '127.0.0.1'),
  port: Number(arg('port', '25566')),
  username: arg('username', 'player'),
  version: arg('version', '1.16.5'),
  auth: 'offline',
  hideErrors: true
}

function out (obj) {
  writeOut(JSON.stringify(obj) + '\n')
}

const rejoin = Number(arg('rejoin', '1'))
let bot = null
let stopping = false

function join () {
  if (stopping) return
  bot = mineflayer.createBot(options)
  const current = bot
  current.once('spawn', () => out({ event: 'spawned', position: current.entity.position }))
  current.on('kicked', (reason) => out({ event: 'kicked', reason: String(reason) }))
  current.on('error', (err) => out({ event: 'error', error: String(err && err.message) }))
  current.once('end', (reason) => {
    out({ event: 'end', reason: String(reason) })
    if (bot === current && rejoin > 0) setTimeout(join, rejoin * 1000)
  })
}

const commands = {
  controls (msg) {
    for (const key of ['forward', 'back', 'left', 'right', 'jump', 'sprint', 'sneak']) {
      if (typeof msg[key] === 'boolean') bot.setControlState(key, msg[key])
    }
    return {}
  },
  stop () {
    bot.clearControlStates()
    return {}
  },
  position () {
    return { position: bot.entity && bot.entity.position }
  }
}

readline.createInterface({ input: control }).on('line', (line) => {
  if (!line.trim()) return
  let msg
  try {
    msg = JSON.parse(line)
    const handler = commands[msg.cmd]
    if (!handler) throw new Error('unknown command ' + msg.cmd)
    out({ id: msg.id, ok: true, ...handler(msg) })
  } catch (err) {
    out({ id: msg && msg.id, ok: false, error: String(err && err.message) })
  }
}).on('close', () => {
  stopping = true
  if (bot) bot.quit()
  setTimeout(() => process.exit(0), 100)
})
process.on('SIGTERM', () => process.exit(0))

join()
