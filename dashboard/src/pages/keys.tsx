// API keys (GET/POST /keys, DELETE /keys/{id}): list, create (the new key is shown once), revoke.
import { useState } from 'preact/hooks'
import { api } from '../api'
import { Empty, ErrorBox, Loading, useAsync, useConfirm } from '../components'
import { fmtTime } from '../format'
import { useSession } from '../session'
import type { ApiKey, CreatedKey } from '../types'

export function KeysPage() {
  const session = useSession()
  const keys = useAsync(() => api<ApiKey[]>('/keys'), [])
  const [dialog, ask] = useConfirm()
  const [name, setName] = useState('')
  const [newTeam, setNewTeam] = useState('')
  const [creating, setCreating] = useState(false)
  const [createError, setCreateError] = useState<unknown>(null)
  const [created, setCreated] = useState<CreatedKey | null>(null)

  const create = async (e: Event) => {
    e.preventDefault()
    if (!name.trim()) return
    setCreating(true)
    setCreateError(null)
    try {
      const body: Record<string, string> = { name: name.trim() }
      if (session.team.admin && newTeam.trim()) body.team = newTeam.trim()
      const k = await api<CreatedKey>('/keys', { method: 'POST', body })
      setCreated(k)
      setName('')
      setNewTeam('')
      keys.refresh()
    } catch (err) {
      setCreateError(err)
    } finally {
      setCreating(false)
    }
  }

  const revoke = (k: ApiKey) =>
    ask({
      title: 'Revoke key?',
      body: (
        <p>
          Revoke <strong>{k.name}</strong> (<code>{k.mask ?? k.id}</code>)? Requests with it are refused from now on
          {k.id === session.key.id ? ', and this session ends' : ''}.
        </p>
      ),
      confirmLabel: 'Revoke',
      danger: true,
      action: () => api(`/keys/${encodeURIComponent(k.id)}`, { method: 'DELETE' }),
      done: keys.refresh,
    })

  return (
    <div class="page" data-testid="page-keys">
      <div class="page-head">
        <h1>API keys</h1>
        <span class="muted">team {session.team.name}</span>
      </div>
      <form class="filters" onSubmit={create} data-testid="key-create-form">
        <label>
          New key's name
          <input value={name} onInput={(e) => setName(e.currentTarget.value)} maxLength={128} placeholder="ci" data-testid="key-name" />
        </label>
        {session.team.admin ? (
          <label>
            for a new team (optional)
            <input
              value={newTeam}
              onInput={(e) => setNewTeam(e.currentTarget.value)}
              maxLength={64}
              pattern="[A-Za-z0-9._\-]+"
              placeholder="team name"
              data-testid="key-team"
            />
          </label>
        ) : null}
        <button type="submit" class="primary" disabled={creating || !name.trim()} data-testid="key-create">
          {creating ? 'Creating…' : 'Create key'}
        </button>
      </form>
      <ErrorBox error={createError} />
      {created ? (
        <div class="notice created-key" data-testid="key-created">
          <p>
            Key <strong>{created.name}</strong>
            {created.teamName ? ` for team ${created.teamName}` : ''} created. Copy it now: it is not shown again.
          </p>
          <input
            readOnly
            class="mono"
            value={created.key}
            size={50}
            onFocus={(e) => e.currentTarget.select()}
            data-testid="key-created-value"
          />
          <button type="button" onClick={() => setCreated(null)}>
            Done
          </button>
        </div>
      ) : null}
      {keys.loading && !keys.data ? <Loading what="keys" /> : null}
      <ErrorBox error={keys.error} />
      {keys.data && keys.data.length === 0 ? <Empty>No key.</Empty> : null}
      {keys.data && keys.data.length > 0 ? (
        <table class="grid" data-testid="keys-table">
          <thead>
            <tr>
              <th>Name</th>
              <th>Key</th>
              <th>ID</th>
              <th>Created</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {keys.data.map((k) => (
              <tr key={k.id} data-testid={`key-row-${k.id}`}>
                <td>
                  {k.name}
                  {k.id === session.key.id ? <span class="badge">this session</span> : null}
                </td>
                <td class="mono">{k.mask}</td>
                <td class="mono">{k.id}</td>
                <td class="nowrap">{fmtTime(k.createdAt)}</td>
                <td>
                  <button type="button" class="danger" onClick={() => revoke(k)} data-testid={`revoke-${k.id}`}>
                    Revoke
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}
      {dialog}
    </div>
  )
}
