// Usage (GET /usage?groupBy=day,template): sandbox time per day, per template, idle share,
// network bytes, and the same numbers as CSV.
import { useMemo, useState } from 'preact/hooks'
import { api, errorMessage, request, withQuery } from '../api'
import { Empty, ErrorBox, Loading, Section, TimeChart, useAsync } from '../components'
import { fmtBytes, fmtDuration, fmtNumber } from '../format'
import type { Usage, UsageNumbers } from '../types'

const DAY = 86400_000

interface Range {
  from: string // yyyy-mm-dd, local
  to: string // yyyy-mm-dd, inclusive
}

function defaultRange(): Range {
  const today = Date.now()
  return { from: isoDay(today - 6 * DAY), to: isoDay(today) }
}

// [from, to) in RFC 3339, in whole UTC days (usage's day buckets are UTC days): from the first
// day's start to the end of the last day.
function utcDay(v: string): number | null {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(v)
  return m ? Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3])) : null
}

function bounds(r: Range): { from: number; to: number } | null {
  const f = utcDay(r.from)
  const t = utcDay(r.to)
  if (f === null || t === null || t < f) return null
  return { from: f, to: t + DAY }
}

const isoDay = (ms: number) => new Date(ms).toISOString().slice(0, 10)

function zero(): Required<UsageNumbers> {
  return {
    runningSeconds: 0,
    pausedSeconds: 0,
    vcpuSeconds: 0,
    gibSeconds: 0,
    idleSeconds: 0,
    creates: 0,
    forks: 0,
    egressBytes: 0,
    ingressBytes: 0,
    snapshotByteHours: 0,
  }
}

function add(a: Required<UsageNumbers>, b: UsageNumbers): void {
  for (const k of Object.keys(a) as (keyof UsageNumbers)[]) a[k] += Number(b[k] ?? 0) || 0
}

function idleShare(n: UsageNumbers): string {
  if (!n.runningSeconds) return '—'
  return `${Math.round((100 * (n.idleSeconds ?? 0)) / n.runningSeconds)}%`
}

const hours = (s: number) => s / 3600

// The unit the per-day chart shows sandbox time in: what its largest day reads best in.
function timeUnit(maxSeconds: number): { name: string; short: string; per: number } {
  if (maxSeconds >= 2 * 3600) return { name: 'sandbox-hours', short: 'h', per: 3600 }
  if (maxSeconds >= 120) return { name: 'sandbox-minutes', short: 'min', per: 60 }
  return { name: 'sandbox-seconds', short: 's', per: 1 }
}

function Stat(props: { label: string; value: string; testid?: string; title?: string }) {
  return (
    <div class="stat" title={props.title}>
      <div class="stat-value" data-testid={props.testid}>
        {props.value}
      </div>
      <div class="stat-label">{props.label}</div>
    </div>
  )
}

export function UsagePage() {
  const [draft, setDraft] = useState<Range>(defaultRange)
  const [range, setRange] = useState<Range>(draft)
  const [csvError, setCsvError] = useState<string | null>(null)
  const b = bounds(range)
  const usage = useAsync(
    () =>
      b
        ? api<Usage>('/usage', { query: { from: new Date(b.from).toISOString(), to: new Date(b.to).toISOString(), groupBy: 'day,template' } })
        : Promise.reject(new Error('choose a range whose end is not before its start')),
    [range.from, range.to],
  )

  const view = useMemo(() => {
    const u = usage.data
    if (!u) return null
    const rows = Array.isArray(u.rows) ? u.rows : []
    const days = new Map<string, Required<UsageNumbers>>()
    const templates = new Map<string, Required<UsageNumbers>>()
    const total = zero()
    for (const r of rows) {
      const d = days.get(r.bucket) ?? zero()
      add(d, r)
      days.set(r.bucket, d)
      const key = r.templateID ?? '—'
      const t = templates.get(key) ?? zero()
      add(t, r)
      templates.set(key, t)
      add(total, r)
    }
    // Every UTC day of the range, those without usage as zeros.
    const byDay: { x: number; n: Required<UsageNumbers> }[] = []
    const perDay = new Map<string, Required<UsageNumbers>>()
    for (const [k, v] of days) {
      const t = Date.parse(k.length === 10 ? `${k}T00:00:00Z` : k)
      const key = Number.isFinite(t) ? isoDay(t) : k
      const acc = perDay.get(key) ?? zero()
      add(acc, v)
      perDay.set(key, acc)
    }
    if (b) {
      for (let d = b.from; d < b.to; d += DAY) byDay.push({ x: d / 1000, n: perDay.get(isoDay(d)) ?? zero() })
    }
    const unit = timeUnit(Math.max(0, ...byDay.map((d) => Math.max(d.n.runningSeconds, d.n.pausedSeconds))))
    return {
      totals: u.totals ? { ...zero(), ...u.totals } : total,
      templates: [...templates.entries()].sort((a, c) => c[1].runningSeconds - a[1].runningSeconds),
      unit,
      time: [byDay.map((d) => d.x), byDay.map((d) => d.n.runningSeconds / unit.per), byDay.map((d) => d.n.pausedSeconds / unit.per)],
      net: [byDay.map((d) => d.x), byDay.map((d) => d.n.egressBytes / 1048576), byDay.map((d) => d.n.ingressBytes / 1048576)],
      empty: rows.length === 0,
    }
  }, [usage.data, b?.from, b?.to])

  const downloadCsv = async () => {
    if (!b) return
    setCsvError(null)
    try {
      const res = await request(withQuery('/usage', {
          from: new Date(b.from).toISOString(),
          to: new Date(b.to).toISOString(),
          groupBy: 'day,template',
          format: 'csv',
        }), {
        method: 'GET',
      })
      const blob = await res.blob()
      const url = URL.createObjectURL(blob)
      const a = document.createElement('a')
      a.href = url
      a.download = `moat-usage-${range.from}-to-${range.to}.csv`
      document.body.appendChild(a)
      a.click()
      a.remove()
      setTimeout(() => URL.revokeObjectURL(url), 10_000)
    } catch (e) {
      setCsvError(errorMessage(e))
    }
  }

  const tot = view?.totals
  return (
    <div class="page" data-testid="page-usage">
      <div class="page-head">
        <h1>Usage</h1>
      </div>
      <form
        class="filters"
        onSubmit={(e) => {
          e.preventDefault()
          setRange({ ...draft })
        }}
      >
        <label>
          From
          <input type="date" value={draft.from} onInput={(e) => setDraft({ ...draft, from: e.currentTarget.value })} data-testid="usage-from" />
        </label>
        <label>
          To (inclusive, UTC days)
          <input type="date" value={draft.to} onInput={(e) => setDraft({ ...draft, to: e.currentTarget.value })} data-testid="usage-to" />
        </label>
        <button type="submit" class="primary" data-testid="usage-apply">
          Show
        </button>
        <button type="button" onClick={downloadCsv} disabled={!b} data-testid="usage-csv">
          Download CSV
        </button>
      </form>
      {csvError ? <p class="error" role="alert">CSV: {csvError}</p> : null}
      {usage.loading && !usage.data ? <Loading what="usage" /> : null}
      <ErrorBox error={usage.error} />
      {tot && view ? (
        <>
          <div class="stats" data-testid="usage-totals">
            <Stat label="running" value={fmtDuration(tot.runningSeconds * 1000)} testid="usage-running" title={`${fmtNumber(tot.runningSeconds, 1)} sandbox-seconds`} />
            <Stat label="paused" value={fmtDuration(tot.pausedSeconds * 1000)} testid="usage-paused" title={`${fmtNumber(tot.pausedSeconds, 1)} sandbox-seconds`} />
            <Stat label="vCPU-hours" value={fmtNumber(hours(tot.vcpuSeconds), 2)} />
            <Stat label="GiB-hours" value={fmtNumber(hours(tot.gibSeconds), 2)} />
            <Stat label="idle share" value={idleShare(tot)} testid="usage-idle" title="idle seconds / running seconds" />
            <Stat label="creates" value={fmtNumber(tot.creates)} testid="usage-creates" />
            <Stat label="forks" value={fmtNumber(tot.forks)} />
            <Stat label="egress" value={fmtBytes(tot.egressBytes)} testid="usage-egress" />
            <Stat label="ingress" value={fmtBytes(tot.ingressBytes)} testid="usage-ingress" />
            <Stat label="snapshot GiB-hours" value={fmtNumber(tot.snapshotByteHours / 1073741824, 3)} />
          </div>
          <span class="hidden" data-testid="usage-running-seconds">
            {tot.runningSeconds}
          </span>
          {view.empty ? <Empty>No usage in this range.</Empty> : null}
          <Section title="Sandbox time per day">
            <TimeChart
              testid="usage-chart-time"
              daily
              series={[
                {
                  label: `running (${view.unit.short})`,
                  color: '#2563eb',
                  fill: true,
                  value: (v) => (v == null ? '—' : `${v.toFixed(2)} ${view.unit.short}`),
                },
                {
                  label: `paused (${view.unit.short})`,
                  color: '#d97706',
                  fill: true,
                  value: (v) => (v == null ? '—' : `${v.toFixed(2)} ${view.unit.short}`),
                },
              ]}
              data={view.time}
              yLabel={view.unit.name}
            />
          </Section>
          <Section title="Network per day">
            <TimeChart
              testid="usage-chart-net"
              daily
              series={[
                { label: 'egress (MiB)', color: '#7c3aed', value: (v) => (v == null ? '—' : `${v.toFixed(1)} MiB`) },
                { label: 'ingress (MiB)', color: '#0d9488', value: (v) => (v == null ? '—' : `${v.toFixed(1)} MiB`) },
              ]}
              data={view.net}
              yLabel="MiB"
            />
          </Section>
          <Section title="Per template">
            {view.templates.length === 0 ? (
              <Empty>No template was used in this range.</Empty>
            ) : (
              <table class="grid" data-testid="usage-templates">
                <thead>
                  <tr>
                    <th>Template</th>
                    <th>Running</th>
                    <th>Paused</th>
                    <th>vCPU-h</th>
                    <th>GiB-h</th>
                    <th>Idle</th>
                    <th>Creates</th>
                    <th>Forks</th>
                    <th>Egress</th>
                    <th>Ingress</th>
                  </tr>
                </thead>
                <tbody>
                  {view.templates.map(([id, n]) => (
                    <tr key={id} data-testid={`usage-template-${id}`}>
                      <td class="mono">{id}</td>
                      <td class="num">{fmtDuration(n.runningSeconds * 1000)}</td>
                      <td class="num">{fmtDuration(n.pausedSeconds * 1000)}</td>
                      <td class="num">{fmtNumber(hours(n.vcpuSeconds), 2)}</td>
                      <td class="num">{fmtNumber(hours(n.gibSeconds), 2)}</td>
                      <td class="num">{idleShare(n)}</td>
                      <td class="num">{fmtNumber(n.creates)}</td>
                      <td class="num">{fmtNumber(n.forks)}</td>
                      <td class="num">{fmtBytes(n.egressBytes)}</td>
                      <td class="num">{fmtBytes(n.ingressBytes)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            )}
          </Section>
        </>
      ) : null}
    </div>
  )
}
