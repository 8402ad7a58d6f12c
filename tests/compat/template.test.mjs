// Custom templates (issue 15) through the official e2b SDK's Template API against moatd, exactly
// as a user builds one: Template.build() from `base` with every step kind and a start command,
// a sandbox of it with the files and the server already up, the layer cache on a rebuild, a
// failing step, a Dockerfile from e2bdev/base, Template.exists, tags, and another team's view.
// Configured only through E2B_API_KEY and E2B_API_URL (run.sh sets them).
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { BuildError, Sandbox, Template, waitForPort } from 'e2b'
import { viaHost } from './support.mjs'

const run = process.pid.toString(36)
const created = []
const templates = []

async function moatApi(method, p, key, body) {
  const res = await fetch(`${process.env.E2B_API_URL}${p}`, {
    method,
    headers: { 'X-API-Key': key, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  })
  const text = await res.text()
  return { status: res.status, body: text ? JSON.parse(text) : null }
}

async function build(template, name, opts = {}) {
  const logs = []
  const info = await Template.build(template, name, {
    cpuCount: 1,
    memoryMB: 512,
    onBuildLogs: (e) => logs.push(e),
    ...opts,
  })
  if (!templates.includes(name)) templates.push(name)
  return { info, logs, text: logs.map((l) => `${l.level} ${l.message}`).join('\n') }
}

describe('custom templates (issue 15)', { concurrency: false }, () => {
  let ctx

  before(() => {
    ctx = fs.mkdtempSync(path.join(os.tmpdir(), 'moat-tpl-'))
    fs.writeFileSync(path.join(ctx, 'hello.txt'), 'hello from the context\n')
    fs.mkdirSync(path.join(ctx, 'app', 'lib'), { recursive: true })
    fs.writeFileSync(path.join(ctx, 'app', 'run.sh'), '#!/bin/sh\necho app-ran\n')
    fs.writeFileSync(path.join(ctx, 'app', 'lib', 'data.txt'), 'nested data\n')
    fs.writeFileSync(path.join(ctx, 'index.html'), '<h1>served by the start command</h1>\n')
  })

  after(async () => {
    for (const s of created) await s.kill().catch(() => {})
    for (const t of templates) {
      await moatApi('DELETE', `/templates/${t}`, process.env.E2B_API_KEY).catch(() => {})
    }
    fs.rmSync(ctx, { recursive: true, force: true })
  })

  const name = `tpl-${run}`
  const template = () =>
    Template({ fileContextPath: ctx })
      .fromTemplate('base')
      .runCmd('echo built-by-run > /tmp/run-marker && id -un > /tmp/run-user')
      .copy('hello.txt', '/home/user/hello.txt')
      .copy('app', '/opt/app/', { mode: 0o755 })
      .setEnvs({ GREETING: 'hi there', APP_HOME: '/opt/app' })
      .runCmd('echo "$GREETING from $APP_HOME" > /tmp/env-marker')
      .setWorkdir('/srv/www')
      .copy('index.html', 'index.html')
      .setUser('root')
      .runCmd('chown -R user /srv/www')
      .setUser('user')
      .setStartCmd('python3 -m http.server 8000', waitForPort(8000))

  test('Template.build() runs every step in a VM; a sandbox of it has the files and the server up', async () => {
    const { info, text } = await build(template(), name)
    assert.equal(info.name, name)
    assert.ok(info.templateId, 'a template id')
    assert.ok(info.buildId, 'a build id')
    assert.match(text, /RUN echo built-by-run/)

    assert.equal(await Template.exists(name), true)
    assert.equal(await Template.exists(`${name}-nope`), false)

    const sbx = await Sandbox.create(name, { timeoutMs: 300_000 })
    created.push(sbx)
    assert.equal(await sbx.files.read('/tmp/run-marker'), 'built-by-run\n')
    assert.equal(await sbx.files.read('/tmp/run-user'), 'user\n', 'RUN runs as the context user')
    assert.equal(await sbx.files.read('/home/user/hello.txt'), 'hello from the context\n')
    assert.equal(await sbx.files.read('/opt/app/lib/data.txt'), 'nested data\n')
    assert.equal(await sbx.files.read('/tmp/env-marker'), 'hi there from /opt/app\n')
    const mode = await sbx.commands.run('stat -c %a /opt/app/run.sh && /opt/app/run.sh')
    assert.equal(mode.stdout, '755\napp-ran\n')
    const owner = await sbx.commands.run('stat -c %U /home/user/hello.txt')
    assert.equal(owner.stdout.trim(), 'user', 'COPY files belong to the context user')
    // The last USER and WORKDIR are the sandbox's defaults; template ENV is not its runtime's.
    const who = await sbx.commands.run('id -un; pwd; echo "[$GREETING]"')
    assert.equal(who.stdout, 'user\n/srv/www\n[]\n')
    // The start command was running when the snapshot was taken: it answers at once.
    const res = await viaHost(sbx.getHost(8000), '/index.html')
    assert.equal(res.status, 200)
    assert.match(res.body, /served by the start command/)
  })

  test('a rebuild with one changed step reuses the cached steps before it', async () => {
    const changed = template().runCmd('echo second > /tmp/second')
    const { text } = await build(changed, name)
    const cached = text.split('\n').filter((l) => /CACHED \[builder/.test(l))
    assert.equal(cached.length, 10, `the 10 unchanged steps come from the cache:\n${text}`)
    assert.match(text, /\[builder 11\/11\] RUN echo second/)
    assert.doesNotMatch(text, /CACHED \[builder 11/)
    const sbx = await Sandbox.create(name, { timeoutMs: 300_000 })
    created.push(sbx)
    assert.equal(await sbx.files.read('/tmp/second'), 'second\n')
  })

  test('a failing step fails the build with its exit status and output; the last ready build stays', async () => {
    const bad = template().runCmd('echo about to fail; exit 7')
    await assert.rejects(build(bad, name), (e) => {
      assert.ok(e instanceof BuildError, `BuildError, got ${e}`)
      assert.match(e.message, /exited with status 7/)
      assert.match(e.message, /about to fail/)
      return true
    })
    // The tag still points at the last ready build.
    const sbx = await Sandbox.create(name, { timeoutMs: 300_000 })
    created.push(sbx)
    assert.equal(await sbx.files.read('/tmp/second'), 'second\n')
  })

  test('a Dockerfile from e2bdev/base', async () => {
    const t = Template({ fileContextPath: ctx }).fromDockerfile(
      [
        'FROM e2bdev/base',
        'ENV STAGE=docker',
        'RUN echo "from a dockerfile: $STAGE" > /tmp/docker-marker',
        'WORKDIR /home/user/work',
        'COPY hello.txt ./',
      ].join('\n'),
    )
    const dname = `dockerfile-${run}`
    await build(t, dname)
    const sbx = await Sandbox.create(dname, { timeoutMs: 300_000 })
    created.push(sbx)
    assert.equal(await sbx.files.read('/tmp/docker-marker'), 'from a dockerfile: docker\n')
    assert.equal(await sbx.files.read('/home/user/work/hello.txt'), 'hello from the context\n')
    assert.equal((await sbx.commands.run('pwd')).stdout, '/home/user/work\n')
  })

  test('an unknown base template fails the build naming it', async () => {
    await assert.rejects(
      build(Template().fromTemplate(`nosuch-${run}`).runCmd('true'), `orphan-${run}`),
      (e) => e instanceof BuildError && /nosuch-/.test(e.message),
    )
  })

  test('tags: a build under name:tag, resolution by tag, and the default tag kept', async () => {
    const t = Template().fromTemplate(name).runCmd('echo tagged > /tmp/tag-marker')
    await build(t, `${name}:v2`)
    const tagged = await Sandbox.create(`${name}:v2`, { timeoutMs: 300_000 })
    created.push(tagged)
    assert.equal(await tagged.files.read('/tmp/tag-marker'), 'tagged\n')
    assert.equal(await tagged.files.read('/tmp/second'), 'second\n', 'built on the parent')
    const plain = await Sandbox.create(name, { timeoutMs: 300_000 })
    created.push(plain)
    assert.equal((await plain.commands.run('test -e /tmp/tag-marker || echo absent')).stdout, 'absent\n')
    assert.equal(await Template.exists(`${name}:v2`), true)
    assert.equal(await Template.exists(`${name}:v3`), false)
    const tags = await moatApi('GET', `/templates/${name}/tags`, process.env.E2B_API_KEY)
    assert.equal(tags.status, 200)
    assert.deepEqual(tags.body.map((x) => x.tag).sort(), ['default', 'v2'])
  })

  test('another team can neither see nor use the template', async () => {
    const admin = process.env.E2B_API_KEY
    const key = await moatApi('POST', '/keys', admin, { name: 'tpl', team: `tpl-team-${run}` })
    assert.equal(key.status, 201, JSON.stringify(key.body))
    const other = key.body.key
    assert.equal(await Template.exists(name, { apiKey: other }), false)
    await assert.rejects(Sandbox.create(name, { apiKey: other, timeoutMs: 60_000 }),
      (e) => e.statusCode === 404 || /not found/i.test(e.message))
    const list = await moatApi('GET', '/templates', other)
    assert.equal(list.status, 200)
    assert.deepEqual(list.body, [])
    assert.equal((await moatApi('DELETE', `/templates/${name}`, other)).status, 404)
    const mine = await moatApi('GET', '/templates', admin)
    assert.ok(mine.body.some((t) => t.aliases.includes(name)), 'still listed for its own team')
  })

  test('bad input: a bad upload URL is 403, an unknown build 404, a second start 400', async () => {
    const admin = process.env.E2B_API_KEY
    const reg = await moatApi('POST', '/v3/templates', admin, { name: `bad-${run}` })
    assert.equal(reg.status, 202, JSON.stringify(reg.body))
    templates.push(`bad-${run}`)
    const files = await moatApi('GET', `/templates/${reg.body.templateID}/files/${'a'.repeat(64)}`, admin)
    assert.equal(files.status, 201)
    assert.equal(files.body.present, false)
    const forged = files.body.url.replace(/token=[0-9a-f]+/, `token=${'0'.repeat(64)}`)
    assert.equal((await fetch(forged, { method: 'PUT', body: 'x' })).status, 403)
    const expired = files.body.url.replace(/expires=\d+/, 'expires=1000')
    assert.equal((await fetch(expired, { method: 'PUT', body: 'x' })).status, 403)
    const notTar = await fetch(files.body.url, { method: 'PUT', body: 'not a tar archive at all' })
    assert.equal(notTar.status, 400)
    assert.equal((await moatApi('GET', `/templates/${reg.body.templateID}/files/xyz`, admin)).status, 400)
    assert.equal((await moatApi('POST', '/v3/templates', admin, { name: 'Bad Name!' })).status, 400)
    assert.equal((await moatApi('POST', '/v3/templates', admin, { name: `x-${run}`, cpuCount: 3 })).status, 400)
    const start = { fromTemplate: 'base', steps: [], force: false }
    const first = await moatApi('POST', `/v2/templates/${reg.body.templateID}/builds/${reg.body.buildID}`, admin, start)
    assert.equal(first.status, 202)
    const again = await moatApi('POST', `/v2/templates/${reg.body.templateID}/builds/${reg.body.buildID}`, admin, start)
    assert.equal(again.status, 400)
    const unknown = await moatApi('GET',
      `/templates/${reg.body.templateID}/builds/00000000-0000-4000-8000-000000000000/status`, admin)
    assert.equal(unknown.status, 404)
    for (let i = 0; i < 600; i++) {
      const st = await moatApi('GET', `/templates/${reg.body.templateID}/builds/${reg.body.buildID}/status`, admin)
      if (st.body.status !== 'building') break
      await new Promise((r) => setTimeout(r, 200))
    }
  })
})
