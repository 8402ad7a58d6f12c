// Sandboxes past and present (GET /history): filters, pages by nextToken, how each one ended.
import { useEffect, useState } from 'preact/hooks'
import { api } from '../api'
import { Empty, ErrorBox, Link, Loading, MetadataChips, StateBadge } from '../components'
import { endedHow, fmtDuration, fmtTime, fromLocalInput, isFailedEnd, toLocalInput } from '../format'
import { currentQuery, replaceQuery } from '../router'
import { TemplateName, useTemplateNames } from '../templates'
import type { History, Page } from '../types'

interface Filters {
  state: string
  template: string
  metadata: string
  from: string
  to: string
  failed: boolean
}

function filtersFromUrl(): Filters {
  const q = currentQuery()
  return {
    state: q.get('state') ?? '',
    template: q.get('template') ?? '',
    metadata: q.get('metadata') ?? '',
    from: q.get('from') ?? '',
    to: q.get('to') ?? '',
    failed: q.get('failed') === 'true',
  }
}

function filtersToUrl(f: Filters): void {
  const q = new URLSearchParams()
  if (f.state) q.set('state', f.state)
  if (f.template) q.set('template', f.template)
  if (f.metadata) q.set('metadata', f.metadata)
  if (f.from) q.set('from', f.from)
  if (f.to) q.set('to', f.to)
  if (f.failed) q.set('failed', 'true')
  replaceQuery(q)
}

// "team=a, env=prod" or "team=a&env=prod" → "team=a&env=prod" (the query parameter's form).
export function metadataQuery(text: string): string {
  return text
    .split(/[,&\s]+/)
    .map((p) => p.trim())
    .filter((p) => p.includes('='))
    .join('&')
}

function isoOf(local: string): string | undefined {
  const t = fromLocalInput(local)
  return t === null ? undefined : new Date(t).toISOString()
}

export function HistoryPage() {
  const [draft, setDraft] = useState<Filters>(filtersFromUrl)
  const [applied, setApplied] = useState<Filters>(draft)
  const [items, setItems] = useState<History[] | null>(null)
  const [next, setNext] = useState('')
  const [error, setError] = useState<unknown>(null)
  const [loading, setLoading] = useState(false)
  const names = useTemplateNames()

  const load = async (f: Filters, token: string) => {
    setLoading(true)
    setError(null)
    try {
      const page = await api<Page<History>>('/history', {
        query: {
          state: f.state,
          templateID: f.template.trim(),
          metadata: metadataQuery(f.metadata),
          from: isoOf(f.from),
          to: isoOf(f.to),
          failed: f.failed ? 'true' : undefined,
          limit: 50,
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
    filtersToUrl(applied)
    load(applied, '')
  }, [applied])

  const set = (patch: Partial<Filters>) => setDraft((d) => ({ ...d, ...patch }))
  const submit = (e: Event) => {
    e.preventDefault()
    setApplied({ ...draft })
  }
  const reset = () => {
    const empty: Filters = { state: '', template: '', metadata: '', from: '', to: '', failed: false }
    setDraft(empty)
    setApplied(empty)
  }

  return (
    <div class="page" data-testid="page-history">
      <div class="page-head">
        <h1>History</h1>
        <span class="muted">every sandbox of the team, newest first</span>
      </div>
      <form class="filters" onSubmit={submit} data-testid="history-filters">
        <label>
          State
          <select value={draft.state} onChange={(e) => set({ state: e.currentTarget.value })} data-testid="filter-state">
            <option value="">any</option>
            <option value="live">live</option>
            <option value="ended">ended</option>
          </select>
        </label>
        <label>
          Template
          <input
            value={draft.template}
            onInput={(e) => set({ template: e.currentTarget.value })}
            placeholder="templateID"
            data-testid="filter-template"
          />
        </label>
        <label>
          Metadata
          <input
            value={draft.metadata}
            onInput={(e) => set({ metadata: e.currentTarget.value })}
            placeholder="key=value, key2=value2"
            data-testid="filter-metadata"
          />
        </label>
        <label>
          From
          <input
            type="datetime-local"
            value={draft.from}
            onInput={(e) => set({ from: e.currentTarget.value })}
            data-testid="filter-from"
          />
        </label>
        <label>
          To
          <input type="datetime-local" value={draft.to} onInput={(e) => set({ to: e.currentTarget.value })} data-testid="filter-to" />
        </label>
        <label class="check">
          <input
            type="checkbox"
            checked={draft.failed}
            onChange={(e) => set({ failed: e.currentTarget.checked })}
            data-testid="filter-failed"
          />
          failed only
        </label>
        <button type="submit" class="primary" data-testid="filter-apply">
          Apply
        </button>
        <button type="button" onClick={reset}>
          Reset
        </button>
        <button
          type="button"
          class="link"
          onClick={() => {
            const now = Date.now()
            const f = { ...draft, from: toLocalInput(now - 3600_000), to: '' }
            setDraft(f)
            setApplied(f)
          }}
        >
          last hour
        </button>
      </form>
      <ErrorBox error={error} />
      {items === null && loading ? <Loading what="history" /> : null}
      {items && items.length === 0 ? <Empty>No sandbox matches.</Empty> : null}
      {items && items.length > 0 ? (
        <table class="grid" data-testid="history-table">
          <thead>
            <tr>
              <th>Sandbox</th>
              <th>Template</th>
              <th>State</th>
              <th>Created</th>
              <th>Lived</th>
              <th>Created by</th>
              <th>Ended</th>
              <th>Metadata</th>
            </tr>
          </thead>
          <tbody>
            {items.map((h) => (
              <tr key={h.sandboxID} data-testid={`history-row-${h.sandboxID}`} class={isFailedEnd(h.endReason) ? 'failed' : ''}>
                <td class="mono">
                  <Link to={`/sandboxes/${encodeURIComponent(h.sandboxID)}`} testid={`history-open-${h.sandboxID}`}>
                    {h.sandboxID}
                  </Link>
                  {h.parent ? (
                    <span class="muted small" title={`${h.parent.kind} of ${h.parent.id}`}>
                      {' '}
                      ↳ {h.parent.kind}
                    </span>
                  ) : null}
                </td>
                <td>
                  <TemplateName id={h.templateID} names={names} />
                </td>
                <td>
                  <StateBadge state={h.state} />
                </td>
                <td class="nowrap">{fmtTime(h.createdAt)}</td>
                <td class="nowrap">{fmtDuration(h.durationMs ?? null)}</td>
                <td>{h.createdBy?.keyName ?? <span class="muted">—</span>}</td>
                <td data-testid={`history-end-${h.sandboxID}`} class={isFailedEnd(h.endReason) ? 'bad' : ''}>
                  {h.endedAt ? (
                    <span title={fmtTime(h.endedAt)}>{endedHow(h)}</span>
                  ) : (
                    <span class="muted">live</span>
                  )}
                </td>
                <td>
                  <MetadataChips metadata={h.metadata} />
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}
      {next ? (
        <p>
          <button type="button" onClick={() => load(applied, next)} disabled={loading} data-testid="history-more">
            {loading ? 'Loading…' : 'Load more'}
          </button>
        </p>
      ) : null}
    </div>
  )
}
