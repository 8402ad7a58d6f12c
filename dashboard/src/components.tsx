// Pieces every page uses: links, loading and error states, polling, the confirmation dialog,
// sparklines and uPlot time charts.
import type { ComponentChildren, JSX } from 'preact'
import { useCallback, useEffect, useLayoutEffect, useRef, useState } from 'preact/hooks'
import uPlot from 'uplot'
import { errorMessage } from './api'
import { href, navigate } from './router'

export function Link(props: {
  to: string
  children: ComponentChildren
  class?: string
  testid?: string
  title?: string
}) {
  const onClick = (e: MouseEvent) => {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) {
      return
    }
    e.preventDefault()
    navigate(props.to)
  }
  return (
    <a href={href(props.to)} onClick={onClick} class={props.class} data-testid={props.testid} title={props.title}>
      {props.children}
    </a>
  )
}

export function Loading(props: { what?: string }) {
  return (
    <p class="loading" data-testid="loading">
      Loading{props.what ? ` ${props.what}` : ''}…
    </p>
  )
}

export function ErrorBox(props: { error: unknown; testid?: string }) {
  if (props.error === null || props.error === undefined) return null
  return (
    <p class="error" role="alert" data-testid={props.testid ?? 'error'}>
      {errorMessage(props.error)}
    </p>
  )
}

export function Empty(props: { children: ComponentChildren }) {
  return <p class="empty">{props.children}</p>
}

export interface Async<T> {
  data: T | undefined
  error: unknown
  loading: boolean
  refresh: () => void
}

// Calls `load` when `deps` change (and on refresh()); the latest answer wins.
export function useAsync<T>(load: () => Promise<T>, deps: unknown[]): Async<T> {
  const [data, setData] = useState<T | undefined>(undefined)
  const [error, setError] = useState<unknown>(null)
  const [loading, setLoading] = useState(true)
  const [tick, setTick] = useState(0)
  useEffect(() => {
    let live = true
    setLoading(true)
    load().then(
      (d) => {
        if (!live) return
        setData(d)
        setError(null)
        setLoading(false)
      },
      (e: unknown) => {
        if (!live) return
        setError(e)
        setLoading(false)
      },
    )
    return () => {
      live = false
    }
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, tick])
  const refresh = useCallback(() => setTick((t) => t + 1), [])
  return { data, error, loading, refresh }
}

// Like useAsync, and again `intervalMs` after each answer while the page shows it (0: never).
// The last data stays on screen when a later poll fails.
export function usePoll<T>(load: () => Promise<T>, intervalMs: number, deps: unknown[]): Async<T> {
  const [data, setData] = useState<T | undefined>(undefined)
  const [error, setError] = useState<unknown>(null)
  const [loading, setLoading] = useState(true)
  const kick = useRef<() => void>(() => {})
  useEffect(() => {
    let live = true
    let timer: number | undefined
    let running = false
    const run = () => {
      if (!live || running) return
      running = true
      window.clearTimeout(timer)
      load().then(
        (d) => {
          if (!live) return
          setData(d)
          setError(null)
          setLoading(false)
        },
        (e: unknown) => {
          if (!live) return
          setError(e)
          setLoading(false)
        },
      ).finally(() => {
        running = false
        if (live && intervalMs > 0) timer = window.setTimeout(run, intervalMs)
      })
    }
    kick.current = run
    setLoading(true)
    run()
    return () => {
      live = false
      window.clearTimeout(timer)
    }
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, intervalMs])
  const refresh = useCallback(() => kick.current(), [])
  return { data, error, loading, refresh }
}

// --- the confirmation dialog ---

export interface ConfirmRequest {
  title: string
  body?: ComponentChildren
  confirmLabel?: string
  danger?: boolean
  action: () => Promise<unknown>
  done?: () => void
}

// A real modal (the browser tests click its buttons): [the element to render, ask(request)].
export function useConfirm(): [JSX.Element | null, (r: ConfirmRequest) => void] {
  const [req, setReq] = useState<ConfirmRequest | null>(null)
  const [busy, setBusy] = useState(false)
  const [error, setError] = useState<unknown>(null)
  const ask = useCallback((r: ConfirmRequest) => {
    setError(null)
    setBusy(false)
    setReq(r)
  }, [])
  const close = () => {
    if (!busy) setReq(null)
  }
  const confirm = async () => {
    if (!req || busy) return
    setBusy(true)
    setError(null)
    try {
      await req.action()
      setReq(null)
      req.done?.()
    } catch (e) {
      setError(e)
    } finally {
      setBusy(false)
    }
  }
  const el = req ? (
    <Modal title={req.title} onClose={close} testid="confirm-dialog">
      <div class="modal-body">{req.body}</div>
      <ErrorBox error={error} testid="confirm-error" />
      <div class="modal-actions">
        <button type="button" onClick={close} disabled={busy} data-testid="cancel">
          Cancel
        </button>
        <button
          type="button"
          class={req.danger ? 'danger' : 'primary'}
          onClick={confirm}
          disabled={busy}
          data-testid="confirm"
          autofocus
        >
          {busy ? 'Working…' : (req.confirmLabel ?? 'Confirm')}
        </button>
      </div>
    </Modal>
  ) : null
  return [el, ask]
}

export function Modal(props: {
  title: string
  onClose: () => void
  children: ComponentChildren
  testid?: string
}) {
  const box = useRef<HTMLDivElement>(null)
  useEffect(() => {
    const onKey = (e: KeyboardEvent) => {
      if (e.key === 'Escape') props.onClose()
    }
    document.addEventListener('keydown', onKey)
    const focus = box.current?.querySelector<HTMLElement>('[autofocus]')
    focus?.focus()
    return () => document.removeEventListener('keydown', onKey)
  }, [props.onClose])
  return (
    <div
      class="modal-backdrop"
      onClick={(e) => {
        if (e.target === e.currentTarget) props.onClose()
      }}
    >
      <div class="modal" role="dialog" aria-modal="true" aria-label={props.title} ref={box} data-testid={props.testid}>
        <h2>{props.title}</h2>
        {props.children}
      </div>
    </div>
  )
}

// --- small displays ---

export function StateBadge(props: { state: string | null | undefined; testid?: string }) {
  const s = props.state ?? 'unknown'
  return (
    <span class={`badge state-${s.replace(/[^a-z_]/gi, '')}`} data-testid={props.testid}>
      {s}
    </span>
  )
}

export function MetadataChips(props: { metadata: Record<string, string> | null | undefined }) {
  const entries = Object.entries(props.metadata ?? {})
  if (entries.length === 0) return <span class="muted">—</span>
  return (
    <span class="chips">
      {entries.map(([k, v]) => (
        <span class="chip" key={k} title={`${k}=${v}`}>
          {k}={v}
        </span>
      ))}
    </span>
  )
}

// A tiny inline SVG line of `values` between 0 and `max` (default: their largest).
export function Sparkline(props: { values: number[]; max?: number; testid?: string; title?: string }) {
  const w = 90
  const h = 22
  const vs = props.values.filter((v) => Number.isFinite(v))
  if (vs.length === 0) {
    return (
      <svg class="spark" width={w} height={h} data-testid={props.testid}>
        <title>{props.title ?? 'no samples yet'}</title>
        <line x1="0" y1={h - 1} x2={w} y2={h - 1} class="spark-empty" />
      </svg>
    )
  }
  const max = Math.max(props.max ?? 0, ...vs, 1e-9)
  const step = vs.length > 1 ? w / (vs.length - 1) : 0
  const pts = vs.map((v, i) => `${(i * step).toFixed(1)},${(h - 1 - (v / max) * (h - 2)).toFixed(1)}`)
  if (vs.length === 1) pts.push(`${w},${pts[0]!.split(',')[1]}`)
  return (
    <svg class="spark" width={w} height={h} data-testid={props.testid}>
      <title>{props.title ?? ''}</title>
      <polyline points={pts.join(' ')} />
    </svg>
  )
}

export interface ChartSeries {
  label: string
  color: string
  fill?: boolean
  value?: (v: number | null) => string
}

// A uPlot time chart: data[0] is unix seconds, data[i] the values of series[i-1].
export function TimeChart(props: {
  series: ChartSeries[]
  data: (number | null)[][]
  height?: number
  yLabel?: string
  yFormat?: (v: number) => string
  testid?: string
  // one point per day: day ticks, dates as labels, points drawn
  daily?: boolean
}) {
  const box = useRef<HTMLDivElement>(null)
  const plot = useRef<uPlot | null>(null)
  const key = props.series.map((s) => s.label).join('|') + (props.yLabel ?? '')
  useLayoutEffect(() => {
    const el = box.current
    if (!el) return
    const fmt = props.yFormat
    const opts: uPlot.Options = {
      width: Math.max(200, el.clientWidth),
      height: props.height ?? 180,
      legend: { show: true },
      cursor: { drag: { x: false, y: false } },
      // y from 0: amounts, never negative
      scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] } },
      tzDate: props.daily ? (ts: number) => uPlot.tzDate(new Date(ts * 1000), 'Etc/UTC') : undefined,
      axes: [
        props.daily
          ? {
              incrs: [86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400],
              values: (_u: uPlot, ticks: number[]) =>
                ticks.map((t) => {
                  const d = new Date(t * 1000)
                  return `${d.getUTCMonth() + 1}/${d.getUTCDate()}`
                }),
            }
          : {},
        {
          label: props.yLabel,
          size: 60,
          values: fmt ? (_u, ticks) => ticks.map((t) => fmt(t)) : undefined,
        },
      ],
      series: [
        {},
        ...props.series.map((s) => ({
          label: s.label,
          stroke: s.color,
          width: 1.5,
          fill: s.fill ? s.color + '33' : undefined,
          value: s.value ? (_u: uPlot, v: number | null) => s.value!(v) : undefined,
          points: { show: !!props.daily },
        })),
      ],
    }
    const u = new uPlot(opts, props.data as uPlot.AlignedData, el)
    plot.current = u
    const ro = new ResizeObserver(() => {
      const w = Math.max(200, el.clientWidth)
      if (w !== u.width) u.setSize({ width: w, height: props.height ?? 180 })
    })
    ro.observe(el)
    return () => {
      ro.disconnect()
      u.destroy()
      plot.current = null
    }
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [key])
  useEffect(() => {
    plot.current?.setData(props.data as uPlot.AlignedData)
  }, [props.data])
  return <div class="chart" ref={box} data-testid={props.testid} />
}

export function Section(props: { title: ComponentChildren; children: ComponentChildren; testid?: string; actions?: ComponentChildren }) {
  return (
    <section class="panel" data-testid={props.testid}>
      <header class="panel-head">
        <h2>{props.title}</h2>
        {props.actions ? <div class="panel-actions">{props.actions}</div> : null}
      </header>
      {props.children}
    </section>
  )
}
