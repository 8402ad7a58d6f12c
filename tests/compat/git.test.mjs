// The official e2b SDK's `sandbox.git` helpers (init, clone, add, commit, branches, remotes,
// status, reset, restore, push, pull, config) against a real moatd, with a bare repository inside
// the sandbox as the only remote (sandboxes have no network). run.sh starts moatd and runs this
// file; it is configured only through E2B_API_KEY, E2B_API_URL and E2B_SANDBOX_URL.
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { CommandExitError, GitUpstreamError, Sandbox } from 'e2b'

for (const name of ['E2B_API_KEY', 'E2B_API_URL', 'E2B_SANDBOX_URL']) {
  assert.ok(process.env[name], `${name} must be set (run tests/compat/run.sh)`)
}

const REMOTE = '/home/user/remote.git' // bare, the "server"
const WORK = '/home/user/work' // made by git.init, pushes
const CLONE = '/home/user/clone' // made by git.clone, pulls
const NAME = 'Moat Compat'
const EMAIL = 'compat@moat.test'

// A file's entry in a GitStatus, by path.
function entry(status, name) {
  const e = status.fileStatus.find((f) => f.name === name)
  assert.ok(e, `${name} in ${JSON.stringify(status.fileStatus)}`)
  return e
}

describe('e2b SDK git helpers against moatd', { concurrency: false }, () => {
  let sbx

  before(async () => {
    sbx = await Sandbox.create({ timeoutMs: 300_000 })
  })

  after(async () => {
    await sbx?.kill()
  })

  test('configureUser writes the global identity that getConfig reads back', async () => {
    await sbx.git.configureUser(NAME, EMAIL)
    assert.equal(await sbx.git.getConfig('user.email'), EMAIL)
    const gitconfig = await sbx.files.read('/home/user/.gitconfig')
    assert.match(gitconfig, /name = Moat Compat/)
    assert.match(gitconfig, /email = compat@moat\.test/)
  })

  test('init makes a working repository and a bare one', async () => {
    await sbx.git.init(WORK, { initialBranch: 'main' })
    await sbx.git.init(REMOTE, { bare: true, initialBranch: 'main' })
    assert.equal(await sbx.files.read(`${WORK}/.git/HEAD`), 'ref: refs/heads/main\n')
    assert.match(await sbx.files.read(`${REMOTE}/config`), /bare = true/)
    assert.equal(await sbx.files.read(`${REMOTE}/HEAD`), 'ref: refs/heads/main\n')
    assert.equal(await sbx.files.exists(`${REMOTE}/.git`), false)

    const st = await sbx.git.status(WORK)
    assert.equal(st.currentBranch, 'main')
    assert.equal(st.detached, false)
    assert.equal(st.isClean, true)
    assert.deepEqual(st.fileStatus, [])
    // No upstream yet: pull refuses before running git pull.
    await assert.rejects(sbx.git.pull(WORK), (e) => e instanceof GitUpstreamError)
  })

  test('status follows untracked, staged and committed files', async () => {
    await sbx.files.write(`${WORK}/README.md`, 'hello\n')
    await sbx.files.write(`${WORK}/notes.txt`, 'n1\n')
    let st = await sbx.git.status(WORK)
    assert.equal(st.isClean, false)
    assert.equal(st.hasUntracked, true)
    assert.equal(st.untrackedCount, 2)
    assert.equal(st.hasStaged, false)
    assert.deepEqual(st.fileStatus.map((f) => f.name).sort(), ['README.md', 'notes.txt'])
    for (const f of st.fileStatus) {
      assert.equal(f.status, 'untracked')
      assert.equal(f.staged, false)
    }

    await sbx.git.add(WORK, { files: ['README.md'] })
    st = await sbx.git.status(WORK)
    const readme = entry(st, 'README.md')
    assert.equal(readme.status, 'added')
    assert.equal(readme.indexStatus, 'A')
    assert.equal(readme.staged, true)
    assert.equal(entry(st, 'notes.txt').status, 'untracked')
    assert.equal(st.stagedCount, 1)
    assert.equal(st.untrackedCount, 1)

    await sbx.git.add(WORK) // everything (git add -A)
    await sbx.git.commit(WORK, 'first commit')
    st = await sbx.git.status(WORK)
    assert.equal(st.isClean, true)
    assert.equal(st.hasChanges, false)
    assert.equal(st.totalCount, 0)
    assert.equal(st.currentBranch, 'main')
  })

  test('createBranch, commit with an author, checkoutBranch, branches, deleteBranch', async () => {
    await sbx.git.createBranch(WORK, 'feature')
    await sbx.git.commit(WORK, 'feature work', {
      allowEmpty: true,
      authorName: 'Feature Author',
      authorEmail: 'feature@moat.test',
    })
    await sbx.git.checkoutBranch(WORK, 'main')

    let br = await sbx.git.branches(WORK)
    assert.deepEqual([...br.branches].sort(), ['feature', 'main'])
    assert.equal(br.currentBranch, 'main')
    // The commit went to feature (createBranch checked it out), with the given author.
    const log = await sbx.commands.run(
      `git -C ${WORK} log --format='%an <%ae>|%s' main..feature`)
    assert.equal(log.stdout, 'Feature Author <feature@moat.test>|feature work\n')

    // Not merged into main: only a forced delete removes it.
    await sbx.git.deleteBranch(WORK, 'feature', { force: true })
    br = await sbx.git.branches(WORK)
    assert.deepEqual(br.branches, ['main'])
    assert.equal(br.currentBranch, 'main')
  })

  test('remoteAdd and remoteGet', async () => {
    assert.equal(await sbx.git.remoteGet(WORK, 'origin'), undefined)
    await sbx.git.remoteAdd(WORK, 'origin', REMOTE)
    assert.equal(await sbx.git.remoteGet(WORK, 'origin'), REMOTE)
    await assert.rejects(sbx.git.remoteAdd(WORK, 'origin', '/elsewhere.git'),
      (e) => e instanceof CommandExitError && /already exists/.test(e.stderr))
  })

  test('push sets the upstream; clone of the bare repository has the commit', async () => {
    await sbx.git.push(WORK, { remote: 'origin', branch: 'main' })
    const st = await sbx.git.status(WORK)
    assert.equal(st.currentBranch, 'main')
    assert.equal(st.upstream, 'origin/main')
    assert.equal(st.ahead, 0)
    assert.equal(st.behind, 0)
    const remoteLog = await sbx.commands.run(`git --git-dir=${REMOTE} log --format='%an <%ae>|%s' main`)
    assert.equal(remoteLog.stdout, `${NAME} <${EMAIL}>|first commit\n`)

    await sbx.git.clone(REMOTE, { path: CLONE })
    assert.equal(await sbx.files.read(`${CLONE}/README.md`), 'hello\n')
    assert.equal(await sbx.files.read(`${CLONE}/notes.txt`), 'n1\n')
    assert.equal(await sbx.git.remoteGet(CLONE, 'origin'), REMOTE)
  })

  test('reset --soft, restore of the index and the worktree, reset --hard', async () => {
    await sbx.files.write(`${WORK}/notes.txt`, 'n2\n')
    await sbx.git.add(WORK, { files: ['notes.txt'] })
    await sbx.git.commit(WORK, 'to be undone')
    await sbx.git.reset(WORK, { mode: 'soft', target: 'HEAD~1' })
    await sbx.files.write(`${WORK}/README.md`, 'hello\nbroken\n')

    let st = await sbx.git.status(WORK)
    assert.equal(st.ahead, 0, 'the soft reset moved HEAD back to origin/main')
    const notes = entry(st, 'notes.txt')
    assert.equal(notes.status, 'modified')
    assert.equal(notes.indexStatus, 'M')
    assert.equal(notes.staged, true, 'a soft reset keeps the change staged')
    const readme = entry(st, 'README.md')
    assert.equal(readme.status, 'modified')
    assert.equal(readme.workingTreeStatus, 'M')
    assert.equal(readme.staged, false)
    assert.equal(st.totalCount, 2)

    await sbx.git.restore(WORK, { paths: ['notes.txt'], staged: true })
    await sbx.git.restore(WORK, { paths: ['README.md'] })
    st = await sbx.git.status(WORK)
    assert.deepEqual(st.fileStatus.map((f) => f.name), ['notes.txt'])
    assert.equal(entry(st, 'notes.txt').staged, false)
    assert.equal(entry(st, 'notes.txt').workingTreeStatus, 'M')
    assert.equal(await sbx.files.read(`${WORK}/README.md`), 'hello\n')
    assert.equal(await sbx.files.read(`${WORK}/notes.txt`), 'n2\n', 'unstaging keeps the file')

    await sbx.git.reset(WORK, { mode: 'hard' })
    st = await sbx.git.status(WORK)
    assert.equal(st.isClean, true)
    assert.equal(await sbx.files.read(`${WORK}/notes.txt`), 'n1\n')
  })

  test('a pushed commit is pulled into the clone', async () => {
    await sbx.git.setConfig('pull.ff', 'only', { scope: 'local', path: CLONE })
    assert.match(await sbx.files.read(`${CLONE}/.git/config`), /ff = only/)

    await sbx.files.write(`${WORK}/feature.txt`, 'pulled content\n')
    await sbx.git.add(WORK)
    await sbx.git.commit(WORK, 'add feature.txt')
    let st = await sbx.git.status(WORK)
    assert.equal(st.ahead, 1)
    assert.equal(st.upstream, 'origin/main')
    await sbx.git.push(WORK) // to the upstream that the first push set

    await sbx.git.pull(CLONE)
    assert.equal(await sbx.files.read(`${CLONE}/feature.txt`), 'pulled content\n')
    st = await sbx.git.status(CLONE)
    assert.equal(st.currentBranch, 'main')
    assert.equal(st.upstream, 'origin/main')
    assert.equal(st.behind, 0)
    assert.equal(st.isClean, true)
  })
})
