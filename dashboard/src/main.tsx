// moat's dashboard: sign-in, then the pages under /dashboard/ (docs/dashboard-contract.md).
import '@xterm/xterm/css/xterm.css'
import 'uplot/dist/uPlot.min.css'
import './style.css'
import { render } from 'preact'
import { useCallback, useEffect, useState } from 'preact/hooks'
import { ApiError, api, errorMessage, resumeSession, setUnauthorizedHandler, signOut } from './api'
import { Link } from './components'
import { match, useRoute } from './router'
import { SessionContext } from './session'
import type { Host, SessionInfo } from './types'
import { AuditPage } from './pages/audit'
import { HistoryPage } from './pages/history'
import { HostsPage } from './pages/hosts'
import { KeysPage } from './pages/keys'
import { LivePage } from './pages/live'
import { SandboxPage } from './pages/sandbox'
import { SignInPage } from './pages/signin'
import { SnapshotsPage } from './pages/snapshots'
import { TemplatePage, TemplatesPage } from './pages/templates'
import { UsagePage } from './pages/usage'

interface NavItem {
  route: string
  label: string
  testid: string
  // the routes under it that keep it highlighted
  prefixes: string[]
}

function navItems(session: SessionInfo, showHosts: boolean): NavItem[] {
  const items: NavItem[] = [
    { route: '/', label: 'Live', testid: 'nav-live', prefixes: ['/'] },
    { route: '/history', label: 'History', testid: 'nav-history', prefixes: ['/history', '/sandboxes'] },
    { route: '/templates', label: 'Templates', testid: 'nav-templates', prefixes: ['/templates'] },
    { route: '/snapshots', label: 'Snapshots', testid: 'nav-snapshots', prefixes: ['/snapshots'] },
    { route: '/usage', label: 'Usage', testid: 'nav-usage', prefixes: ['/usage'] },
    { route: '/audit', label: 'Audit', testid: 'nav-audit', prefixes: ['/audit'] },
  ]
  if (session.team.admin) {
    items.push({ route: '/keys', label: 'API keys', testid: 'nav-keys', prefixes: ['/keys'] })
  }
  if (showHosts) items.push({ route: '/hosts', label: 'Hosts', testid: 'nav-hosts', prefixes: ['/hosts'] })
  return items
}

function isActive(item: NavItem, route: string): boolean {
  if (item.route === '/') return route === '/'
  return item.prefixes.some((p) => route === p || route.startsWith(p + '/'))
}

function Page(props: { route: string }) {
  const r = props.route
  let m: Record<string, string> | null
  if (r === '/') return <LivePage />
  if (r === '/history') return <HistoryPage />
  if ((m = match('/sandboxes/:id', r))) return <SandboxPage id={m.id!} />
  if (r === '/templates') return <TemplatesPage />
  if ((m = match('/templates/:id', r))) return <TemplatePage id={m.id!} />
  if (r === '/snapshots') return <SnapshotsPage />
  if (r === '/keys') return <KeysPage />
  if (r === '/usage') return <UsagePage />
  if (r === '/audit') return <AuditPage />
  if (r === '/hosts') return <HostsPage />
  return (
    <div class="page">
      <h1>Not found</h1>
      <p>
        There is no page at {r}. <Link to="/">Live sandboxes</Link>
      </p>
    </div>
  )
}

function Shell(props: { session: SessionInfo; onSignOut: () => void }) {
  const route = useRoute()
  const [showHosts, setShowHosts] = useState(false)
  const [signingOut, setSigningOut] = useState(false)
  const [error, setError] = useState<string | null>(null)
  useEffect(() => {
    if (!props.session.team.admin) return
    let live = true
    api<Host[]>('/hosts').then(
      (hosts) => live && setShowHosts(Array.isArray(hosts) && hosts.length > 0),
      () => live && setShowHosts(false),
    )
    return () => {
      live = false
    }
  }, [props.session.team.id])
  const doSignOut = async () => {
    setSigningOut(true)
    setError(null)
    try {
      await signOut()
      props.onSignOut()
    } catch (e) {
      // A session that is already gone is signed out all the same.
      if (e instanceof ApiError && e.status === 401) props.onSignOut()
      else setError(errorMessage(e))
    } finally {
      setSigningOut(false)
    }
  }
  return (
    <SessionContext.Provider value={props.session}>
      <header class="top">
        <Link to="/" class="brand">
          moat
        </Link>
        <nav>
          {navItems(props.session, showHosts).map((item) => (
            <Link key={item.route} to={item.route} testid={item.testid} class={isActive(item, route) ? 'active' : ''}>
              {item.label}
            </Link>
          ))}
        </nav>
        <div class="who" data-testid="who">
          <span title={`team ${props.session.team.id}`}>
            {props.session.team.name}
            {props.session.team.admin ? <span class="badge admin">admin</span> : null}
          </span>
          <span class="muted" title={`key ${props.session.key.id}`}>
            key {props.session.key.name}
          </span>
          <button type="button" onClick={doSignOut} disabled={signingOut} data-testid="signout">
            Sign out
          </button>
        </div>
      </header>
      {error ? (
        <p class="error banner" role="alert">
          {error}
        </p>
      ) : null}
      <main>
        <Page route={route} key={route} />
      </main>
    </SessionContext.Provider>
  )
}

function App() {
  const [session, setSession] = useState<SessionInfo | null>(null)
  const [state, setState] = useState<'loading' | 'in' | 'out' | 'error'>('loading')
  const [bootError, setBootError] = useState<string | null>(null)
  const [expired, setExpired] = useState(false)

  const resume = useCallback(() => {
    setState('loading')
    resumeSession().then(
      (s) => {
        setSession(s)
        setState(s ? 'in' : 'out')
      },
      (e: unknown) => {
        setBootError(errorMessage(e))
        setState('error')
      },
    )
  }, [])

  useEffect(() => {
    setUnauthorizedHandler(() => {
      setSession(null)
      setExpired(true)
      setState('out')
    })
    resume()
  }, [])

  if (state === 'loading') return <p class="boot">Loading…</p>
  if (state === 'error') {
    return (
      <div class="signin">
        <h1>moat</h1>
        <p class="error" role="alert">
          Could not reach moatd: {bootError}
        </p>
        <button type="button" onClick={resume}>
          Try again
        </button>
      </div>
    )
  }
  if (state === 'out' || !session) {
    return (
      <SignInPage
        expired={expired}
        onSignedIn={(s) => {
          setExpired(false)
          setSession(s)
          setState('in')
        }}
      />
    )
  }
  return (
    <Shell
      session={session}
      onSignOut={() => {
        setExpired(false)
        setSession(null)
        setState('out')
      }}
    />
  )
}

const root = document.getElementById('app')
if (root) {
  root.textContent = ''
  render(<App />, root)
}
