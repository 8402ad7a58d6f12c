// Named snapshots (GET /snapshots; pages by the X-Next-Token header).
import { useEffect, useState } from 'preact/hooks'
import { request, withQuery } from '../api'
import { Empty, ErrorBox, Link, Loading } from '../components'
import { fmtTime } from '../format'
import type { Snapshot } from '../types'

export function SnapshotsPage() {
  const [items, setItems] = useState<Snapshot[] | null>(null)
  const [next, setNext] = useState('')
  const [error, setError] = useState<unknown>(null)
  const [loading, setLoading] = useState(false)
  const load = async (token: string) => {
    setLoading(true)
    setError(null)
    try {
      const res = await request(withQuery('/snapshots', { limit: 100, nextToken: token }))
      const got = (await res.json()) as Snapshot[]
      setItems((old) => (token && old ? [...old, ...got] : got))
      setNext(res.headers.get('X-Next-Token') ?? '')
    } catch (e) {
      setError(e)
    } finally {
      setLoading(false)
    }
  }
  useEffect(() => {
    load('')
  }, [])
  return (
    <div class="page" data-testid="page-snapshots">
      <div class="page-head">
        <h1>Snapshots</h1>
        <span class="muted">named snapshots of the team's sandboxes; each is a template to create from</span>
      </div>
      {items === null && loading ? <Loading what="snapshots" /> : null}
      <ErrorBox error={error} />
      {items && items.length === 0 ? <Empty>No snapshot yet.</Empty> : null}
      {items && items.length > 0 ? (
        <table class="grid" data-testid="snapshots-table">
          <thead>
            <tr>
              <th>Snapshot</th>
              <th>Names</th>
              <th>Of sandbox</th>
              <th>Created</th>
            </tr>
          </thead>
          <tbody>
            {items.map((s) => (
              <tr key={s.snapshotID} data-testid={`snapshot-row-${s.snapshotID}`}>
                <td class="mono">{s.snapshotID}</td>
                <td>
                  {(s.names ?? []).map((n) => (
                    <span class="chip" key={n}>
                      {n}
                    </span>
                  ))}
                </td>
                <td class="mono">
                  {s.sandboxID ? <Link to={`/sandboxes/${encodeURIComponent(s.sandboxID)}`}>{s.sandboxID}</Link> : '—'}
                </td>
                <td class="nowrap">{fmtTime(s.createdAt)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}
      {next ? (
        <button type="button" onClick={() => load(next)} disabled={loading}>
          Load more
        </button>
      ) : null}
    </div>
  )
}
