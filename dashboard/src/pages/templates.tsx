// Templates (GET /templates), one template's builds (GET /templates/{id}) and a build's log
// (GET /templates/{id}/builds/{buildID}/status).
import { useState } from 'preact/hooks'
import { api } from '../api'
import { Empty, ErrorBox, Link, Loading, Section, StateBadge, useAsync } from '../components'
import { fmtDetail, fmtTime } from '../format'
import type { BuildStatus, Template, TemplateDetail } from '../types'

const enc = encodeURIComponent

function nameOf(t: Template): string {
  return t.aliases?.[0] ?? t.names?.[0] ?? t.templateID
}

export function TemplatesPage() {
  const list = useAsync(() => api<Template[]>('/templates'), [])
  return (
    <div class="page" data-testid="page-templates">
      <div class="page-head">
        <h1>Templates</h1>
        <span class="muted">the team's custom templates (the built-in "base" is not listed)</span>
      </div>
      {list.loading && !list.data ? <Loading what="templates" /> : null}
      <ErrorBox error={list.error} />
      {list.data && list.data.length === 0 ? (
        <Empty>No custom template yet. Build one with the SDK's Template API or `moat template build`.</Empty>
      ) : null}
      {list.data && list.data.length > 0 ? (
        <table class="grid" data-testid="templates-table">
          <thead>
            <tr>
              <th>Name</th>
              <th>ID</th>
              <th>Status</th>
              <th>Size</th>
              <th>Builds</th>
              <th>Spawned</th>
              <th>Last spawned</th>
              <th>Updated</th>
            </tr>
          </thead>
          <tbody>
            {list.data.map((t) => (
              <tr key={t.templateID} data-testid={`template-row-${t.templateID}`}>
                <td>
                  <Link to={`/templates/${enc(t.templateID)}`}>{nameOf(t)}</Link>
                  {t.public ? <span class="badge">public</span> : null}
                </td>
                <td class="mono">{t.templateID}</td>
                <td>
                  <StateBadge state={t.buildStatus} />
                </td>
                <td class="nowrap">
                  {t.cpuCount ?? '—'} vCPU · {t.memoryMB ?? '—'} MiB{t.diskSizeMB ? ` · ${t.diskSizeMB} MiB disk` : ''}
                </td>
                <td class="num">{t.buildCount ?? ''}</td>
                <td class="num">{t.spawnCount ?? ''}</td>
                <td class="nowrap">{fmtTime(t.lastSpawnedAt)}</td>
                <td class="nowrap">{fmtTime(t.updatedAt)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}
    </div>
  )
}

function BuildLog(props: { templateID: string; buildID: string }) {
  const log = useAsync(
    () =>
      api<BuildStatus>(`/templates/${enc(props.templateID)}/builds/${enc(props.buildID)}/status`, {
        query: { logsOffset: 0 },
      }),
    [props.templateID, props.buildID],
  )
  if (log.loading && !log.data) return <Loading what="the build log" />
  if (!log.data) return <ErrorBox error={log.error} />
  const entries = log.data.logEntries ?? []
  const text =
    entries.length > 0
      ? entries.map((e) => `${fmtTime(e.timestamp)} ${(e.level ?? '').padEnd(5)} ${e.message}`).join('\n')
      : (log.data.logs ?? []).join('\n')
  return (
    <>
      <p>
        Build <span class="mono">{props.buildID}</span>: <StateBadge state={log.data.status} />{' '}
        {log.data.reason ? <span class="bad">{fmtDetail(log.data.reason)}</span> : null}{' '}
        <button type="button" onClick={log.refresh}>
          Reload
        </button>
      </p>
      {text ? (
        <pre class="console" data-testid="build-log">
          {text}
        </pre>
      ) : (
        <Empty>The build logged nothing.</Empty>
      )}
    </>
  )
}

export function TemplatePage(props: { id: string }) {
  const t = useAsync(() => api<TemplateDetail>(`/templates/${enc(props.id)}`), [props.id])
  const [build, setBuild] = useState<string | null>(null)
  const d = t.data
  return (
    <div class="page" data-testid="page-template">
      <div class="page-head">
        <h1>
          Template <span class="mono">{d ? nameOf(d) : props.id}</span>
        </h1>
        <Link to="/templates">all templates</Link>
      </div>
      {t.loading && !d ? <Loading what="the template" /> : null}
      <ErrorBox error={t.error} />
      {d ? (
        <>
          <Section title="Builds">
            {(d.builds ?? []).length === 0 ? <Empty>No build.</Empty> : null}
            {(d.builds ?? []).length > 0 ? (
              <table class="grid" data-testid="builds-table">
                <thead>
                  <tr>
                    <th>Build</th>
                    <th>Status</th>
                    <th>Created</th>
                    <th>Finished</th>
                    <th>Size</th>
                    <th>Reason</th>
                    <th />
                  </tr>
                </thead>
                <tbody>
                  {(d.builds ?? []).map((b) => (
                    <tr key={b.buildID} class={b.status === 'error' ? 'failed' : ''}>
                      <td class="mono">{b.buildID}</td>
                      <td>
                        <StateBadge state={b.status} />
                      </td>
                      <td class="nowrap">{fmtTime(b.createdAt)}</td>
                      <td class="nowrap">{fmtTime(b.finishedAt)}</td>
                      <td class="nowrap">
                        {b.cpuCount} vCPU · {b.memoryMB} MiB
                      </td>
                      <td class="small wrap">{fmtDetail(b.reason)}</td>
                      <td>
                        <button type="button" onClick={() => setBuild(b.buildID)} data-testid={`build-log-${b.buildID}`}>
                          Log
                        </button>
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            ) : null}
            {d.tags && d.tags.length > 0 ? (
              <p class="small">
                Tags:{' '}
                {d.tags.map((tg) => (
                  <span class="chip" key={tg.tag} title={tg.buildID}>
                    {tg.tag}
                  </span>
                ))}
              </p>
            ) : null}
          </Section>
          {build ? (
            <Section title="Build log">
              <BuildLog templateID={d.templateID} buildID={build} />
            </Section>
          ) : null}
        </>
      ) : null}
    </div>
  )
}
