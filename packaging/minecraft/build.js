#!/usr/bin/env node
'use strict'
// The Minecraft connector for the packaged metabgm-edge, in three parts:
//
//   node packaging/minecraft/build.js bundle OUT_DIR          one script: connector + its npm packages
//   node packaging/minecraft/build.js sea OUT_DIR             that script inside a copy of node: one
//                                                             executable, no Node.js needed (~100 MB)
//   node packaging/minecraft/build.js data OUT_DIR VERSION..  protocol data for these Minecraft versions
//
// minecraft-data (about 500 MB: every Java and Bedrock version) is left out of the script. The
// connector needs the files of one Java version (a few MB), so each VERSION gets a data pack
// (OUT_DIR/metabgm-edge-minecraft-data-VERSION.tar.gz) that the player unpacks into the data folder's
// minecraft/ (metabgm-edge says where when it is missing). Packs of several versions unpack into
// the same folder side by side: each holds the package's code, the common tables, its own
// version's files and a marker installed/VERSION; the data.js index lists only the versions whose
// marker is there, so an absent version is one the connector says it has no data for.

const fs = require('fs')
const path = require('path')
const { execFileSync } = require('child_process')

const ROOT = path.resolve(__dirname, '..', '..')
const CONNECTOR = path.join(ROOT, 'connectors', 'minecraft')
const MCDATA = path.join(CONNECTOR, 'node_modules', 'minecraft-data')
const SEA_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2'

// minecraft-data is resolved at run time from $METABGM_EDGE_MINECRAFT_DATA/node_modules (the data
// pack); everything else is inside the script. A single executable's own require() only knows
// node's built-in modules, hence createRequire.
const BANNER = `var require = require('module').createRequire(
  require('path').join(process.env.METABGM_EDGE_MINECRAFT_DATA || __dirname, 'connector.js'));`

function bundle (out) {
  const esbuild = require('esbuild')
  fs.mkdirSync(out, { recursive: true })
  esbuild.buildSync({
    entryPoints: [path.join(CONNECTOR, 'connector.js')],
    outfile: path.join(out, 'connector.js'),
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    external: ['minecraft-data'],
    banner: { js: BANNER },
    legalComments: 'eof',
    logLevel: 'warning'
  })
  const mcdataVersion = require(path.join(MCDATA, 'package.json')).version
  fs.writeFileSync(path.join(out, 'package.json'), JSON.stringify({
    name: 'metabgm-edge-minecraft-connector',
    private: true,
    bundled: true,
    main: 'connector.js',
    'minecraft-data': mcdataVersion,
    engines: { node: '>=20' }
  }, null, 2) + '\n')
  fs.copyFileSync(path.join(CONNECTOR, 'README.md'), path.join(out, 'README.md'))
  console.log(`bundle: ${path.join(out, 'connector.js')} (${mb(path.join(out, 'connector.js'))} MB), minecraft-data ${mcdataVersion} left out`)
}

function sea (out) {
  bundle(out)
  const exe = path.join(out, process.platform === 'win32' ? 'metabgm-edge-minecraft.exe' : 'metabgm-edge-minecraft')
  const config = path.join(out, 'sea-config.json')
  const blob = path.join(out, 'sea-prep.blob')
  fs.writeFileSync(config, JSON.stringify({
    main: path.join(out, 'connector.js'), output: blob, disableExperimentalSEAWarning: true
  }))
  execFileSync(process.execPath, ['--experimental-sea-config', config], { stdio: 'inherit' })
  fs.copyFileSync(process.execPath, exe)
  fs.chmodSync(exe, 0o755)
  const postject = require.resolve('postject/dist/cli.js')
  const args = [postject, exe, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', SEA_FUSE]
  if (process.platform === 'darwin') args.push('--macho-segment-name', 'NODE_SEA')
  execFileSync(process.execPath, args, { stdio: 'inherit' })
  fs.rmSync(blob)
  fs.rmSync(config)
  console.log(`sea: ${exe} (${mb(exe)} MB): node ${process.version} with the connector inside`)
}

function filesOf (entry) {
  // Every file a version's lazy getters in data.js require, and its proto.yml.
  const files = new Set()
  for (const key of Object.keys(entry)) {
    const desc = Object.getOwnPropertyDescriptor(entry, key)
    if (desc.get) {
      const m = /require\("\.\/(minecraft-data\/[^"]+)"\)/.exec(desc.get.toString())
      if (m) files.add(m[1])
    } else if (typeof desc.value === 'string' && desc.value.startsWith(MCDATA)) {
      files.add(path.relative(MCDATA, desc.value).split(path.sep).join('/'))
    }
  }
  return [...files].filter(f => fs.existsSync(path.join(MCDATA, f)))
}

function copy (rel, dest) {
  const from = path.join(MCDATA, rel)
  const to = path.join(dest, rel)
  fs.mkdirSync(path.dirname(to), { recursive: true })
  fs.cpSync(from, to, { recursive: true })
}

const DATA_INDEX = `'use strict'
// The versions of this folder: those whose data pack was unpacked here (installed/VERSION).
const fs = require('fs')
const path = require('path')
const all = require('./data-all.js')
const pc = {}
for (const key of Object.keys(all.pc)) {
  if (fs.existsSync(path.join(__dirname, 'installed', key))) {
    Object.defineProperty(pc, key, Object.getOwnPropertyDescriptor(all.pc, key))
  }
}
module.exports = { pc, bedrock: {} }
`

function data (out, versions) {
  const index = require(path.join(MCDATA, 'data.js'))
  const mcdata = require(MCDATA)
  const pkgVersion = require(path.join(MCDATA, 'package.json')).version
  for (const version of versions) {
    const key = index.pc[version] ? version : (mcdata.versionsByMinecraftVersion.pc[version] || {}).majorVersion
    if (!key || !index.pc[key]) throw new Error(`minecraft-data ${pkgVersion} has no Java Edition data for ${version}`)
    const name = `metabgm-edge-minecraft-data-${version}`
    const stage = path.join(out, name)
    const dest = path.join(stage, 'node_modules', 'minecraft-data')
    fs.rmSync(stage, { recursive: true, force: true })
    for (const rel of ['package.json', 'index.js', 'lib', 'minecraft-data/schemas', 'minecraft-data/data/pc/common',
      'minecraft-data/data/dataPaths.json', 'minecraft-data/data/bedrock/common', ...filesOf(index.pc[key])]) {
      if (fs.existsSync(path.join(MCDATA, rel))) copy(rel, dest)
    }
    fs.copyFileSync(path.join(MCDATA, 'data.js'), path.join(dest, 'data-all.js'))
    fs.writeFileSync(path.join(dest, 'data.js'), DATA_INDEX)
    fs.mkdirSync(path.join(dest, 'installed'), { recursive: true })
    fs.writeFileSync(path.join(dest, 'installed', key), `${version}\n`)
    const archive = path.join(out, `${name}.tar.gz`)
    execFileSync('tar', ['-czf', archive, '-C', stage, 'node_modules'])
    console.log(`data: ${archive} (${mb(archive)} MB packed, ${mbTree(stage)} MB unpacked) for Minecraft ${version}`)
  }
}

function mb (file) {
  return (fs.statSync(file).size / 1e6).toFixed(1)
}

function mbTree (dir) {
  let total = 0
  for (const entry of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) total += fs.statSync(path.join(entry.parentPath || entry.path, entry.name)).size
  }
  return (total / 1e6).toFixed(1)
}

function main () {
  const [what, out, ...rest] = process.argv.slice(2)
  if (!out || !['bundle', 'sea', 'data'].includes(what)) {
    console.error('usage: node build.js bundle|sea OUT_DIR | data OUT_DIR VERSION...')
    process.exit(2)
  }
  if (what === 'bundle') bundle(path.resolve(out))
  else if (what === 'sea') sea(path.resolve(out))
  else data(path.resolve(out), rest.length ? rest : ['1.16.5'])
}

main()
