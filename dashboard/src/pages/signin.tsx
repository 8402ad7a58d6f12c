// Sign-in with an API key: sent once in POST /dashboard/api/session and forgotten (the field is
// cleared whatever the answer; nothing is stored).
import { useRef, useState } from 'preact/hooks'
import { ApiError, errorMessage, signIn } from '../api'
import type { SessionInfo } from '../types'

export function SignInPage(props: { expired: boolean; onSignedIn: (s: SessionInfo) => void }) {
  const input = useRef<HTMLInputElement>(null)
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState<string | null>(null)
  const submit = async (e: Event) => {
    e.preventDefault()
    const el = input.current
    if (!el) return
    const key = el.value.trim()
    el.value = ''
    if (!key) {
      setError('Enter an API key.')
      return
    }
    setBusy(true)
    setError(null)
    try {
      const s = await signIn(key)
      props.onSignedIn(s)
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        setError(`Sign-in refused: ${err.message}`)
      } else if (err instanceof ApiError && err.status === 429) {
        setError(`Too many attempts: ${err.message}. Wait a moment and try again.`)
      } else {
        setError(`Sign-in failed: ${errorMessage(err)}`)
      }
      el.focus()
    } finally {
      setBusy(false)
    }
  }
  return (
    <div class="signin" data-testid="signin">
      <h1>moat</h1>
      <p class="muted">Sign in with one of your team's API keys.</p>
      {props.expired ? <p class="notice">Your session ended; sign in again.</p> : null}
      <form onSubmit={submit} autocomplete="off">
        <label for="apikey">API key</label>
        <input
          id="apikey"
          ref={input}
          type="password"
          name="moat-api-key"
          autocomplete="off"
          spellcheck={false}
          placeholder="e2b_…"
          data-testid="signin-key"
          disabled={busy}
          autofocus
        />
        <button type="submit" class="primary" disabled={busy} data-testid="signin-submit">
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
      </form>
      {error ? (
        <p class="error" role="alert" data-testid="signin-error">
          {error}
        </p>
      ) : null}
      <p class="fine">The key is sent once and not kept by this page; a cookie holds the session for 12 hours.</p>
    </div>
  )
}
