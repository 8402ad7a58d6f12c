// How numbers, times and sizes are shown.

export function parseTime(s: string | null | undefined): number | null {
  if (!s) return null
  const t = Date.parse(s)
  return Number.isFinite(t) ? t : null
}

const pad = (n: number) => String(n).padStart(2, '0')

// Local time, to the second: "2026-12-07 06:01:02".
export function fmtTime(s: string | number | null | undefined): string {
  const t = typeof s === 'number' ? s : parseTime(s)
  if (t === null) return '—'
  const d = new Date(t)
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
}

// "850 ms", "4.2 s", "3m 05s", "2h 04m", "3d 02h".
export function fmtDuration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '—'
  if (ms < 0) ms = 0
  if (ms < 1000) return `${Math.round(ms)} ms`
  const s = ms / 1000
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`
  const m = Math.floor(s / 60)
  if (m < 60) return `${m}m ${pad(Math.floor(s % 60))}s`
  const h = Math.floor(m / 60)
  if (h < 24) return `${h}h ${pad(m % 60)}m`
  return `${Math.floor(h / 24)}d ${pad(h % 24)}h`
}

export function fmtAge(since: string | null | undefined, now = Date.now()): string {
  const t = parseTime(since)
  return t === null ? '—' : fmtDuration(now - t)
}

export function fmtBytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '—'
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = n
  let i = 0
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024
    i++
  }
  return i === 0 ? `${v} B` : `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`
}

export function fmtNumber(n: number | null | undefined, digits = 0): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '—'
  return n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: 0 })
}

export function fmtPct(x: number | null | undefined): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return '—'
  return `${x < 10 ? x.toFixed(1) : Math.round(x)}%`
}

export function fmtMetadata(m: Record<string, string> | null | undefined): string {
  if (!m) return ''
  return Object.entries(m)
    .map(([k, v]) => `${k}=${v}`)
    .join(' ')
}

export function fmtDetail(d: unknown): string {
  if (d === null || d === undefined || d === '') return ''
  if (typeof d === 'string') return d
  try {
    return JSON.stringify(d)
  } catch {
    return String(d)
  }
}

// <input type="datetime-local"> values (local time, minutes) to and from unix milliseconds.
export function toLocalInput(ms: number): string {
  const d = new Date(ms)
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`
}

export function fromLocalInput(v: string): number | null {
  if (!v) return null
  const t = new Date(v).getTime()
  return Number.isFinite(t) ? t : null
}

export function toDateInput(ms: number): string {
  const d = new Date(ms)
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`
}

// A date input's value as the start of that day in local time.
export function fromDateInput(v: string): number | null {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(v)
  if (!m) return null
  return new Date(Number(m[1]), Number(m[2]) - 1, Number(m[3])).getTime()
}

// How a sandbox's life ended, in words ("killed by ci", "timeout", "error: …", "host lost").
export function endedHow(h: {
  endReason?: string | null
  endedBy?: string | { keyName?: string } | null
  endDetail?: string | null
  endedAt?: string | null
}): string {
  const by = typeof h.endedBy === 'string' ? h.endedBy : (h.endedBy?.keyName ?? '')
  switch (h.endReason) {
    case 'killed':
      return by ? `killed by ${by}` : 'killed'
    case 'timeout':
      return 'timeout'
    case 'error':
      return h.endDetail ? `error: ${h.endDetail}` : 'error'
    case 'host_lost':
      return 'host lost'
    case null:
    case undefined:
    case '':
      return h.endedAt ? 'ended' : ''
    default:
      return h.endReason
  }
}

export function isFailedEnd(reason: string | null | undefined): boolean {
  return reason === 'error' || reason === 'host_lost'
}
