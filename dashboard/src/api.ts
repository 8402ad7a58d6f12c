// The page's only way to moatd: same-origin fetches with the session cookie and the CSRF token
// (docs/dashboard-contract.md). The token lives in this module's memory only; a reload asks
// GET /dashboard/api/session for it again. A 401 from any route signs the page out.
import type { SessionInfo } from './types'

let csrfToken: string | null = null
let onUnauthorized: () => void = () => {}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message)
  }
}

export function setUnauthorizedHandler(f: () => void): void {
  onUnauthorized = f
}

export function currentCsrf(): string | null {
  return csrfToken
}

function headers(extra?: Record<string, string>): Record<string, string> {
  const h: Record<string, string> = { Accept: 'application/json', ...extra }
  if (csrfToken !== null) h['X-Moat-CSRF'] = csrfToken
  return h
}

// The server's message from an error answer ({"code","message"}), else the status line.
async function errorOf(res: Response): Promise<ApiError> {
  let message = `${res.status} ${res.statusText}`.trim()
  try {
    const text = await res.text()
    if (text) {
      try {
        const j = JSON.parse(text) as { message?: unknown }
        message = typeof j.message === 'string' && j.message ? j.message : text.slice(0, 500)
      } catch {
        message = text.slice(0, 500)
      }
    }
  } catch {
    // keep the status line
  }
  return new ApiError(res.status, message)
}

export interface RequestOptions {
  method?: string
  body?: unknown
  query?: Record<string, string | number | boolean | undefined | null>
  // false: a 401 is the caller's to handle (sign-in); true (default): it signs the page out.
  signOutOn401?: boolean
}

export function withQuery(path: string, query?: RequestOptions['query']): string {
  if (!query) return path
  const q = new URLSearchParams()
  for (const [k, v] of Object.entries(query)) {
    if (v === undefined || v === null || v === '' || v === false) continue
    q.set(k, String(v))
  }
  const s = q.toString()
  return s ? `${path}${path.includes('?') ? '&' : '?'}${s}` : path
}

export async function request(path: string, opts: RequestOptions = {}): Promise<Response> {
  const init: RequestInit = {
    method: opts.method ?? 'GET',
    credentials: 'same-origin',
    headers: headers(opts.body !== undefined ? { 'Content-Type': 'application/json' } : undefined),
    cache: 'no-store',
  }
  if (opts.body !== undefined) init.body = JSON.stringify(opts.body)
  let res: Response
  try {
    res = await fetch(withQuery(path, opts.query), init)
  } catch (e) {
    throw new ApiError(0, `moatd did not answer (${e instanceof Error ? e.message : String(e)})`)
  }
  if (!res.ok) {
    const err = await errorOf(res)
    if (res.status === 401 && opts.signOutOn401 !== false) {
      csrfToken = null
      onUnauthorized()
    }
    throw err
  }
  return res
}

export async function api<T>(path: string, opts: RequestOptions = {}): Promise<T> {
  const res = await request(path, opts)
  if (res.status === 204) return undefined as T
  const text = await res.text()
  if (!text) return undefined as T
  try {
    return JSON.parse(text) as T
  } catch {
    throw new ApiError(res.status, `moatd answered ${path} with something that is not JSON`)
  }
}

export async function apiText(path: string, opts: RequestOptions = {}): Promise<string> {
  const res = await request(path, opts)
  return res.text()
}

// --- the session ---

export async function resumeSession(): Promise<SessionInfo | null> {
  try {
    const s = await api<SessionInfo>('/dashboard/api/session', { signOutOn401: false })
    csrfToken = s.csrfToken
    return s
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return null
    throw e
  }
}

export async function signIn(apiKey: string): Promise<SessionInfo> {
  const s = await api<SessionInfo>('/dashboard/api/session', {
    method: 'POST',
    body: { apiKey },
    signOutOn401: false,
  })
  csrfToken = s.csrfToken
  return s
}

export async function signOut(): Promise<void> {
  try {
    await request('/dashboard/api/session', { method: 'DELETE', signOutOn401: false })
  } finally {
    csrfToken = null
  }
}

export function errorMessage(e: unknown): string {
  if (e instanceof ApiError) return e.status ? `${e.message} (${e.status})` : e.message
  if (e instanceof Error) return e.message
  return String(e)
}
