// One sandbox: its summary, timeline, lineage, commands, console log, metrics while it runs,
// and a web terminal into it.
import { useEffect, useMemo, useState } from 'preact/hooks'
import type { ComponentChildren } from 'preact'
import { ApiError, api, apiText } from '../api'
import {
  Empty,
  ErrorBox,
  Link,
  Loading,
  MetadataChips,
  Section,
  StateBadge,
  TimeChart,
  useAsync,
  useConfirm,
  usePoll,
} from '../components'
import { endedHow, fmtBytes, fmtDetail, fmtDuration, fmtPct, fmtTime, isFailedEnd } from '../format'
import { sampleMetrics, samplesOf } from '../metrics'
import type { CommandPage, CommandRecord, History, HistoryDetail, ListedSandbox, StreamHeadTail } from '../types'
import { sandboxActions } from './live'
import { TerminalPanel } from './terminal'

const enc = encodeURIComponent

interface Loaded {
  history: HistoryDetail | null
  historyError: unknown
  live: ListedSandbox | null
}

// The history record, and the live record while the sandbox is live (its state and size now).
async function loadSandbox(id: string): Promise<Loaded> {
  const [h, l] = await Promise.allSettled([
    api<HistoryDetail>(`/history/${enc(id)}`),
    api<ListedSandbox>(`/sandboxes/${enc(id)}`),
  ])
  const history = h.status === 'fulfilled' ? h.value : null
  const live = l.status === 'fulfilled' ? l.value : null
  if (!history && !live) throw h.status === 'rejected' ? h.reason : new Error('not found')
  return { history, historyError: h.status === 'rejected' ? h.reason : null, live }
}

function Field(props: { label: string; children: ComponentChildren; testid?: string }) {
  return (
    <>
      <dt>{props.label}</dt>
      <dd data-testid={props.testid}>{props.children}</dd>
    </>
  )
}

function Summary(props: { id: string; data: Loaded }) {
  const h = props.data.history
  const l = props.data.live
  const state = l?.state ?? h?.state ?? 'unknown'
  const ended = h?.endedAt
  return (
    <dl class="summary" data-testid="sandbox-summary">
      <Field label="State">
        <StateBadge state={state} testid="sandbox-state" />
        {ended ? (
          <span class={isFailedEnd(h?.endReason) ? 'bad' : ''} data-testid="sandbox-ended-how">
            {' '}
            {endedHow(h!)} at {fmtTime(ended)}
          </span>
        ) : null}
      </Field>
      <Field label="Template">
        <span class="mono">{h?.templateID ?? l?.templateID}</span>
      </Field>
      <Field label="Created">{fmtTime(h?.createdAt ?? l?.startedAt)}</Field>
      <Field label="Lived">{fmtDuration(h?.durationMs ?? (l ? Date.now() - Date.parse(l.startedAt) : null))}</Field>
      {l?.endAt ? <Field label="Times out">{fmtTime(l.endAt)}</Field> : null}
      <Field label="Created by">{h?.createdBy?.keyName ?? '—'}</Field>
      <Field label="Size">
        {h?.cpuCount ?? l?.cpuCount} vCPU · {h?.memoryMB ?? l?.memoryMB} MiB
        {l?.diskSizeMB ? ` · ${l.diskSizeMB} MiB disk` : ''}
      </Field>
      <Field label="Host">{h?.hostID || l?.hostID || '—'}</Field>
      <Field label="Network">
        {h ? `${fmtBytes(h.egressBytes ?? 0)} out · ${fmtBytes(h.ingressBytes ?? 0)} in` : '—'}
      </Field>
      <Field label="Metadata">
        <MetadataChips metadata={h?.metadata ?? l?.metadata} />
      </Field>
    </dl>
  )
}

function Lineage(props: { h: HistoryDetail }) {
  const p = props.h.parent
  const children = props.h.children ?? []
  return (
    <div class="lineage" data-testid="lineage">
      <p>
        <strong>Parent: </strong>
        {p ? (
          p.kind === 'fork' ? (
            <>
              forked from{' '}
              <Link to={`/sandboxes/${enc(p.id)}`} class="mono" testid="parent-link">
                {p.id}
              </Link>
            </>
          ) : (
            <>
              created from snapshot{' '}
              <Link to="/snapshots" class="mono" testid="parent-link">
                {p.id}
              </Link>
            </>
          )
        ) : (
          <span class="muted">none (created from template {props.h.templateID})</span>
        )}
      </p>
      <p>
        <strong>Children: </strong>
        {children.length === 0 ? <span class="muted">none</span> : null}
      </p>
      {children.length > 0 ? (
        <ul class="children">
          {children.map((c: History) => (
            <li key={c.sandboxID}>
              <Link to={`/sandboxes/${enc(c.sandboxID)}`} class="mono">
                {c.sandboxID}
              </Link>{' '}
              <StateBadge state={c.state} /> {fmtTime(c.createdAt)} {c.endedAt ? `· ${endedHow(c)}` : ''}
            </li>
          ))}
        </ul>
      ) : null}
    </div>
  )
}

function Timeline(props: { h: HistoryDetail }) {
  const events = props.h.events ?? []
  if (events.length === 0) return <Empty>No events recorded.</Empty>
  return (
    <table class="grid" data-testid="timeline">
      <thead>
        <tr>
          <th>#</th>
          <th>Time</th>
          <th>Event</th>
          <th>Took</th>
          <th>Detail</th>
        </tr>
      </thead>
      <tbody>
        {events.map((e) => (
          <tr key={e.seq} data-testid={`event-${e.kind}`} class={e.kind === 'error' || e.kind === 'host_lost' ? 'failed' : ''}>
            <td class="num">{e.seq}</td>
            <td class="nowrap">{fmtTime(e.at)}</td>
            <td>
              <span class={`badge ev-${e.kind}`}>{e.kind}</span>
            </td>
            <td class="nowrap">{e.durationMs ? fmtDuration(e.durationMs) : ''}</td>
            <td class="mono small wrap">{fmtDetail(e.detail)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  )
}

// A stream's first and last bytes as moatd kept them: the head, and the tail after a gap.
function streamText(s: StreamHeadTail | undefined): string {
  if (!s) return ''
  const head = s.head ?? ''
  const tail = s.tail ?? ''
  if (!tail) return head
  const shown = new TextEncoder().encode(head).length + new TextEncoder().encode(tail).length
  const gap = (s.bytes ?? shown) - shown
  return `${head}${gap > 0 ? `\n… ${fmtBytes(gap)} not kept …\n` : ''}${tail}`
}

function commandFailed(c: CommandRecord): boolean {
  return (c.exitCode !== null && c.exitCode !== undefined && c.exitCode !== 0) || !!c.signal || !!c.error
}

function Stream(props: { name: string; s: StreamHeadTail | undefined; open: boolean; testid: string }) {
  const text = streamText(props.s)
  const bytes = props.s?.bytes ?? 0
  if (!text && bytes === 0) return <span class="muted small">{props.name}: empty</span>
  return (
    <details open={props.open} class="stream">
      <summary>
        {props.name} ({fmtBytes(bytes)})
      </summary>
      <pre data-testid={props.testid}>{text}</pre>
    </details>
  )
}

function Commands(props: { id: string; live: boolean }) {
  const first = usePoll(
    () => api<CommandPage>(`/history/${enc(props.id)}/commands`, { query: { limit: 50 } }),
    props.live ? 3000 : 0,
    [props.id, props.live],
  )
  const [older, setOlder] = useState<CommandRecord[]>([])
  const [before, setBefore] = useState<number | null>(null)
  const [olderError, setOlderError] = useState<unknown>(null)
  useEffect(() => {
    if (before === null && first.data) setBefore(first.data.nextBefore ?? 0)
  }, [first.data])
  const loadOlder = async () => {
    if (!before) return
    try {
      const page = await api<CommandPage>(`/history/${enc(props.id)}/commands`, { query: { limit: 50, before } })
      setOlder((o) => [...o, ...(page.items ?? [])])
      setBefore(page.nextBefore ?? 0)
    } catch (e) {
      setOlderError(e)
    }
  }
  if (!first.data && first.loading) return <Loading what="commands" />
  if (!first.data) return <ErrorBox error={first.error} testid="commands-error" />
  const items = [...(first.data.items ?? []), ...older]
  return (
    <>
      <ErrorBox error={first.error} />
      {items.length === 0 ? <Empty>No command has run in this sandbox.</Empty> : null}
      {items.length > 0 ? (
        <table class="grid commands" data-testid="commands">
          <thead>
            <tr>
              <th>Command</th>
              <th>Exit</th>
              <th>Started</th>
              <th>Took</th>
              <th>Output</th>
            </tr>
          </thead>
          <tbody>
            {items.map((c) => {
              const failed = commandFailed(c)
              const running = !c.endedAt && c.exitCode == null && !c.error
              return (
                <tr key={c.id} data-testid={`command-${c.id}`} class={failed ? 'failed' : ''}>
                  <td class="cmd">
                    <code data-testid={`command-text-${c.id}`}>{c.command}</code>
                    <div class="muted small">
                      {c.kind && c.kind !== 'command' ? `${c.kind} · ` : ''}
                      {c.user ? `as ${c.user}` : ''}
                      {c.cwd ? ` in ${c.cwd}` : ''}
                    </div>
                  </td>
                  <td class={`num ${failed ? 'bad' : ''}`} data-testid={`exit-${c.id}`}>
                    {running ? <span class="muted">running</span> : null}
                    {c.exitCode ?? ''}
                    {c.signal ? ` ${c.signal}` : ''}
                    {c.error ? <div class="small bad">{c.error}</div> : null}
                  </td>
                  <td class="nowrap">{fmtTime(c.startedAt)}</td>
                  <td class="nowrap">{fmtDuration(c.durationMs ?? null)}</td>
                  <td class="outputs">
                    <Stream name="stdout" s={c.stdout} open={false} testid={`stdout-${c.id}`} />
                    <Stream name="stderr" s={c.stderr} open={failed} testid={`stderr-${c.id}`} />
                  </td>
                </tr>
              )
            })}
          </tbody>
        </table>
      ) : null}
      <ErrorBox error={olderError} />
      {before ? (
        <button type="button" onClick={loadOlder} data-testid="commands-older">
          Older commands
        </button>
      ) : null}
    </>
  )
}

function Console(props: { id: string }) {
  const log = useAsync(() => apiText(`/history/${enc(props.id)}/console`), [props.id])
  return (
    <>
      {log.loading && log.data === undefined ? <Loading what="the console log" /> : null}
      <ErrorBox error={log.error} />
      {log.data !== undefined ? (
        log.data ? (
          <pre class="console" data-testid="console">
            {log.data}
          </pre>
        ) : (
          <Empty>The console log is empty.</Empty>
        )
      ) : null}
      <button type="button" onClick={log.refresh}>
        Reload
      </button>
    </>
  )
}

function Metrics(props: { id: string }) {
  const m = usePoll(() => sampleMetrics(props.id), 2000, [props.id])
  const samples = m.data ?? samplesOf(props.id)
  const data = useMemo(() => {
    const xs = samples.map((s) => (Date.parse(s.timestamp) || s.timestampUnix * 1000) / 1000)
    return {
      cpu: [xs, samples.map((s) => s.cpuUsedPct)],
      mem: [xs, samples.map((s) => s.memUsed / 1048576), samples.map((s) => s.memTotal / 1048576)],
    }
  }, [samples, samples.length])
  const last = samples[samples.length - 1]
  return (
    <>
      <ErrorBox error={m.error} />
      <p class="muted small">
        Sampled every 2 s while this page is open
        {last ? ` · now ${fmtPct(last.cpuUsedPct)} CPU, ${fmtBytes(last.memUsed)} of ${fmtBytes(last.memTotal)}` : ''}
      </p>
      {samples.length < 2 ? <p class="muted small">Collecting samples…</p> : null}
      <div class="charts" style={samples.length < 2 ? 'display:none' : undefined}>
        <TimeChart
          testid="chart-cpu"
          series={[{ label: 'CPU %', color: '#2563eb', fill: true, value: (v) => fmtPct(v) }]}
          data={data.cpu}
          yFormat={(v) => `${v}%`}
          height={160}
        />
        <TimeChart
          testid="chart-mem"
          series={[
            { label: 'memory used (MiB)', color: '#16a34a', fill: true, value: (v) => (v == null ? '—' : `${v.toFixed(0)} MiB`) },
            { label: 'memory (MiB)', color: '#9ca3af', value: (v) => (v == null ? '—' : `${v.toFixed(0)} MiB`) },
          ]}
          data={data.mem}
          yFormat={(v) => `${v}`}
          height={160}
        />
      </div>
    </>
  )
}

export function SandboxPage(props: { id: string }) {
  const id = props.id
  const [pollMs, setPollMs] = useState(5000)
  const sb = usePoll(() => loadSandbox(id), pollMs, [id])
  const [dialog, ask] = useConfirm()
  const [terminal, setTerminal] = useState(false)
  const data = sb.data
  const ended = !!data?.history?.endedAt || (data !== undefined && !data.live)
  useEffect(() => {
    if (ended) setPollMs(0)
  }, [ended])
  const state = data?.live?.state ?? data?.history?.state
  const running = !ended && state === 'running'
  useEffect(() => {
    if (!running) setTerminal(false)
  }, [running])
  const notFound = sb.error instanceof ApiError && sb.error.status === 404
  return (
    <div class="page" data-testid="page-sandbox">
      <div class="page-head">
        <h1>
          Sandbox <span class="mono" data-testid="sandbox-id">{id}</span>
        </h1>
        {data && !ended && (data.live || data.history)
          ? sandboxActions(ask, { sandboxID: id, state: state ?? '' }, sb.refresh)
          : null}
      </div>
      {!data && sb.loading ? <Loading what="the sandbox" /> : null}
      {notFound && !data ? <p class="error">No sandbox {id} in this team's history.</p> : <ErrorBox error={sb.error} />}
      {data ? (
        <>
          <Section title="Summary">
            <Summary id={id} data={data} />
            {data.historyError ? <ErrorBox error={data.historyError} testid="history-error" /> : null}
          </Section>
          {running ? (
            <Section
              title="Terminal"
              testid="terminal-section"
              actions={
                terminal ? null : (
                  <button type="button" class="primary" onClick={() => setTerminal(true)} data-testid="terminal-open">
                    Open terminal
                  </button>
                )
              }
            >
              {terminal ? (
                <TerminalPanel id={id} onClose={() => setTerminal(false)} />
              ) : (
                <p class="muted small">A login shell in the sandbox, in this page.</p>
              )}
            </Section>
          ) : null}
          {running ? (
            <Section title="Metrics" testid="metrics-section">
              <Metrics id={id} />
            </Section>
          ) : null}
          <Section title="Commands" testid="commands-section">
            <Commands id={id} live={!ended} />
          </Section>
          {data.history ? (
            <>
              <Section title="Timeline" testid="timeline-section">
                <Timeline h={data.history} />
              </Section>
              <Section title="Lineage" testid="lineage-section">
                <Lineage h={data.history} />
              </Section>
            </>
          ) : null}
          <Section title="Console log" testid="console-section">
            <Console id={id} />
          </Section>
        </>
      ) : null}
      {dialog}
    </div>
  )
}
