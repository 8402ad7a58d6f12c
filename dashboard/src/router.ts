// History API routing under /dashboard/: moatd answers every /dashboard/<path> without a dot in
// its last segment with index.html, so a reload of any page lands here again.
import { useEffect, useState } from 'preact/hooks'

export const BASE = '/dashboard'

type Listener = () => void
const listeners = new Set<Listener>()

function emit(): void {
  for (const l of listeners) l()
}

window.addEventListener('popstate', emit)

// The route: the path below /dashboard ("/" for the home page), without a trailing slash.
export function currentRoute(): string {
  let p = window.location.pathname
  if (p.startsWith(BASE)) p = p.slice(BASE.length)
  if (!p.startsWith('/')) p = '/' + p
  if (p.length > 1 && p.endsWith('/')) p = p.slice(0, -1)
  return p
}

export function href(route: string): string {
  return route === '/' ? `${BASE}/` : `${BASE}${route}`
}

export function navigate(route: string, replace = false): void {
  const url = href(route)
  if (url === window.location.pathname + window.location.search) return
  if (replace) window.history.replaceState(null, '', url)
  else window.history.pushState(null, '', url)
  window.scrollTo(0, 0)
  emit()
}

// The query string of the page's URL, and setting it without a new history entry.
export function currentQuery(): URLSearchParams {
  return new URLSearchParams(window.location.search)
}

export function replaceQuery(q: URLSearchParams): void {
  const s = q.toString()
  window.history.replaceState(null, '', window.location.pathname + (s ? `?${s}` : ''))
}

export function useRoute(): string {
  const [route, setRoute] = useState(currentRoute())
  useEffect(() => {
    const l = () => setRoute(currentRoute())
    listeners.add(l)
    return () => {
      listeners.delete(l)
    }
  }, [])
  return route
}

// A route pattern such as "/sandboxes/:id" against a route; the parameters or null.
export function match(pattern: string, route: string): Record<string, string> | null {
  const ps = pattern.split('/')
  const rs = route.split('/')
  if (ps.length !== rs.length) return null
  const out: Record<string, string> = {}
  for (let i = 0; i < ps.length; i++) {
    const p = ps[i]!
    const r = rs[i]!
    if (p.startsWith(':')) {
      if (!r) return null
      try {
        out[p.slice(1)] = decodeURIComponent(r)
      } catch {
        return null
      }
    } else if (p !== r) return null
  }
  return out
}
