// The audit log (GET /audit): control actions, newest first, filtered by action and target.
import { useEffect, useState } from 'preact/hooks'
import { api } from '../api'
import { Empty, ErrorBox, Link, Loading } from '../components'
import { fmtDetail, fmtTime, fromLocalInput } from '../format'
import { useSession } from '../session'
import type { AuditEntry, Page } from '../types'

const ACTIONS = [
  'sandbox.',
  'sandbox.create',
  'sandbox.kill',
  'sandbox.pause',
  'sandbox.resume',
  'sandbox.fork',
  'sandbox.snapshot',
  'sandbox.timeout',
  'sandbox.network',
  'snapshot.delete',
  'template.build',
  'template.delete',
  'key.create',
  'key.revoke',
  'team.create',
  'team.quotas',
  'host.drain',
  'host.undrain',
  'session.create',
  'session.delete',
]

interface Filters {
  action: string
  target: string
  from: string
  to: string
  allTeams: boolean
}

const iso = (v: string) => {
  const t = fromLocalInput(v)
  return t === null ? undefined : new Date(t).toISOString()
}

export function AuditPage() {
  const session = useSession()
  const empty: Filters = { action: '', target: '', from: '', to: '', allTeams: false }
  const [draft, setDraft] = useState<Filters>(empty)
  const [applied, setApplied] = useState<Filters>(empty)
  const [items, setItems] = useState<AuditEntry[] | null>(null)
  const [next, setNext] = useState('')
  const [error, setError] = useState<unknown>(null)
  const [loading, setLoading] = useState(false)
  const load = async (f: Filters, token: string) => {
    setLoading(true)
    setError(null)
    try {
      const page = await api<Page<AuditEntry>>('/audit', {
        query: {
          action: f.action.trim(),
          target: f.target.trim(),
          from: iso(f.from),
          to: iso(f.to),
          allTeams: f.allTeams ? 'true' : undefined,
          limit: 100,
          nextToken: token,
        },
      })
      const got = Array.isArray(page?.items) ? page.items : []
      setItems((old) => (token && old ? [...old, ...got] : got))
      setNext(page?.nextToken ?? '')
    } catch (e) {
      setError(e)
      if (!token) setItems(null)
    } finally {
      setLoading(false)
    }
  }
  useEffect(() => {
    load(applied, '')
  }, [applied])
  const set = (p: Partial<Filters>) => setDraft((d) => ({ ...d, ...p }))
  const targetLink = (e: AuditEntry) => {
    const t = e.target ?? ''
    if (e.action.startsWith('sandbox.') && t) return <Link to={`/sandboxes/${encodeURIComponent(t)}`}>{t}</Link>
    return t
  }
  return (
    <div class="page" data-testid="page-audit">
      <div class="page-head">
        <h1>Audit log</h1>
        <span class="muted">every control action, newest first</span>
      </div>
      <form
        class="filters"
        onSubmit={(e) => {
          e.preventDefault()
          setApplied({ ...draft })
        }}
      >
        <label>
          Action
          <input
            list="audit-actions"
            value={draft.action}
            onInput={(e) => set({ action: e.currentTarget.value })}
            placeholder="e.g. sandbox.kill, sandbox."
            data-testid="audit-action"
          />
          <datalist id="audit-actions">
            {ACTIONS.map((a) => (
              <option key={a} value={a} />
            ))}
          </datalist>
        </label>
        <label>
          Target
          <input value={draft.target} onInput={(e) => set({ target: e.currentTarget.value })} placeholder="sandbox, key, template…" />
        </label>
        <label>
          From
          <input type="datetime-local" value={draft.from} onInput={(e) => set({ from: e.currentTarget.value })} />
        </label>
        <label>
          To
          <input type="datetime-local" value={draft.to} onInput={(e) => set({ to: e.currentTarget.value })} />
        </label>
        {session.team.admin ? (
          <label class="check">
            <input type="checkbox" checked={draft.allTeams} onChange={(e) => set({ allTeams: e.currentTarget.checked })} />
            all teams
          </label>
        ) : null}
        <button type="submit" class="primary" data-testid="audit-apply">
          Apply
        </button>
      </form>
      <ErrorBox error={error} />
      {items === null && loading ? <Loading what="the audit log" /> : null}
      {items && items.length === 0 ? <Empty>Nothing recorded matches.</Empty> : null}
      {items && items.length > 0 ? (
        <table class="grid" data-testid="audit-table">
          <thead>
            <tr>
              <th>Time</th>
              <th>Action</th>
              <th>Target</th>
              <th>Outcome</th>
              <th>Key</th>
              {applied.allTeams ? <th>Team</th> : null}
              <th>From</th>
              <th>Detail</th>
              <th>Request</th>
            </tr>
          </thead>
          <tbody>
            {items.map((e) => (
              <tr key={e.seq} class={e.outcome === 'error' ? 'failed' : ''} data-testid={`audit-row-${e.seq}`}>
                <td class="nowrap">{fmtTime(e.at)}</td>
                <td class="mono">{e.action}</td>
                <td class="mono">{targetLink(e)}</td>
                <td class={e.outcome === 'error' ? 'bad' : ''}>
                  {e.outcome}
                  {e.status ? ` (${e.status})` : ''}
                </td>
                <td>{e.keyName || <span class="muted">{e.keyID || '—'}</span>}</td>
                {applied.allTeams ? <td class="mono">{e.teamID}</td> : null}
                <td class="mono small">{e.source}</td>
                <td class="small wrap">{fmtDetail(e.detail)}</td>
                <td class="mono small">{e.requestID}</td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}
      {next ? (
        <button type="button" onClick={() => load(applied, next)} disabled={loading} data-testid="audit-more">
          {loading ? 'Loading…' : 'Load more'}
        </button>
      ) : null}
    </div>
  )
}
