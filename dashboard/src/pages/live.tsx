// The home page: the team's running and paused sandboxes, polled every 2 s, with CPU and
// memory sparklines and kill / pause / resume behind a confirmation.
import { api } from '../api'
import { ErrorBox, Link, Loading, MetadataChips, Sparkline, StateBadge, useConfirm, usePoll } from '../components'
import { fmtAge, fmtBytes, fmtPct, fmtTime } from '../format'
import { forget, sampleMetrics, samplesOf } from '../metrics'
import { TemplateName, useTemplateNames } from '../templates'
import type { ListedSandbox } from '../types'

const POLL_MS = 2000
const MAX_SAMPLED = 40

async function loadLive(): Promise<ListedSandbox[]> {
  const list = await api<ListedSandbox[]>('/v2/sandboxes', { query: { state: 'running,paused' } })
  const sandboxes = Array.isArray(list) ? list : []
  sandboxes.sort((a, b) => (Date.parse(b.startedAt) || 0) - (Date.parse(a.startedAt) || 0))
  forget(new Set(sandboxes.map((s) => s.sandboxID)))
  // One sample of each running sandbox per poll (the first MAX_SAMPLED); a failed one is skipped.
  await Promise.allSettled(
    sandboxes
      .filter((s) => s.state === 'running')
      .slice(0, MAX_SAMPLED)
      .map((s) => sampleMetrics(s.sandboxID)),
  )
  return sandboxes
}

export function sandboxActions(ask: ReturnType<typeof useConfirm>[1], s: { sandboxID: string; state: string }, done: () => void) {
  const id = s.sandboxID
  const path = `/sandboxes/${encodeURIComponent(id)}`
  const kill = () =>
    ask({
      title: 'Kill sandbox?',
      body: (
        <p>
          Kill <code>{id}</code>? Its processes stop and its disk is deleted; this cannot be undone.
        </p>
      ),
      confirmLabel: 'Kill',
      danger: true,
      action: () => api(path, { method: 'DELETE' }),
      done,
    })
  const pause = () =>
    ask({
      title: 'Pause sandbox?',
      body: (
        <p>
          Pause <code>{id}</code>? Its memory and disk are saved and it stops running until resumed.
        </p>
      ),
      confirmLabel: 'Pause',
      action: () => api(`${path}/pause`, { method: 'POST' }),
      done,
    })
  const resume = () =>
    ask({
      title: 'Resume sandbox?',
      body: (
        <p>
          Resume <code>{id}</code> with a timeout of 5 minutes?
        </p>
      ),
      confirmLabel: 'Resume',
      action: () => api(`${path}/resume`, { method: 'POST', body: { timeout: 300 } }),
      done,
    })
  return (
    <span class="actions">
      {s.state === 'running' ? (
        <button type="button" onClick={pause} data-testid={`pause-${id}`}>
          Pause
        </button>
      ) : null}
      {s.state === 'paused' ? (
        <button type="button" onClick={resume} data-testid={`resume-${id}`}>
          Resume
        </button>
      ) : null}
      <button type="button" class="danger" onClick={kill} data-testid={`kill-${id}`}>
        Kill
      </button>
    </span>
  )
}

export function LivePage() {
  const live = usePoll(loadLive, POLL_MS, [])
  const [dialog, ask] = useConfirm()
  const names = useTemplateNames()
  const list = live.data
  const now = Date.now()
  return (
    <div class="page" data-testid="page-live">
      <div class="page-head">
        <h1>Live sandboxes</h1>
        <span class="muted">{list ? `${list.length} running or paused · refreshed every 2 s` : ''}</span>
      </div>
      <ErrorBox error={live.error} />
      {!list && live.loading ? <Loading what="sandboxes" /> : null}
      {list && list.length === 0 ? (
        <p class="empty" data-testid="live-empty">
          No sandbox is running or paused. Sandboxes that ended are in <Link to="/history">History</Link>.
        </p>
      ) : null}
      {list && list.length > 0 ? (
        <table class="grid" data-testid="live-table">
          <thead>
            <tr>
              <th>Sandbox</th>
              <th>Template</th>
              <th>State</th>
              <th>Age</th>
              <th>Size</th>
              <th>CPU</th>
              <th>Memory</th>
              <th>Metadata</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {list.map((s) => {
              const samples = samplesOf(s.sandboxID)
              const last = samples[samples.length - 1]
              return (
                <tr key={s.sandboxID} data-testid={`sandbox-row-${s.sandboxID}`}>
                  <td class="mono">
                    <Link to={`/sandboxes/${encodeURIComponent(s.sandboxID)}`} testid={`open-${s.sandboxID}`}>
                      {s.sandboxID}
                    </Link>
                  </td>
                  <td>
                    <TemplateName id={s.templateID} alias={s.alias} names={names} />
                  </td>
                  <td>
                    <StateBadge state={s.state} testid={`state-${s.sandboxID}`} />
                  </td>
                  <td title={`started ${fmtTime(s.startedAt)}; ends ${fmtTime(s.endAt)}`}>{fmtAge(s.startedAt, now)}</td>
                  <td class="nowrap">
                    {s.cpuCount} vCPU · {s.memoryMB} MiB
                  </td>
                  <td class="nowrap">
                    <Sparkline values={samples.map((m) => m.cpuUsedPct)} max={100} testid={`cpu-spark-${s.sandboxID}`} title="CPU %, last minutes" />
                    <span class="num">{s.state === 'running' && last ? fmtPct(last.cpuUsedPct) : ''}</span>
                  </td>
                  <td class="nowrap">
                    <Sparkline
                      values={samples.map((m) => m.memUsed)}
                      max={last?.memTotal}
                      testid={`mem-spark-${s.sandboxID}`}
                      title="memory used, last minutes"
                    />
                    <span class="num">{s.state === 'running' && last ? fmtBytes(last.memUsed) : ''}</span>
                  </td>
                  <td>
                    <MetadataChips metadata={s.metadata} />
                  </td>
                  <td>{sandboxActions(ask, s, live.refresh)}</td>
                </tr>
              )
            })}
          </tbody>
        </table>
      ) : null}
      {dialog}
    </div>
  )
}
