// Sandbox metrics as the page saw them: GET /sandboxes/{id}/metrics answers the sample of now
// (moatd keeps no series), so the page keeps what it sampled, per sandbox, for the last
// minutes, across page changes (not across reloads).
import { api } from './api'
import type { MetricSample } from './types'

const KEEP_MS = 15 * 60 * 1000
const series = new Map<string, MetricSample[]>()

export function samplesOf(id: string): MetricSample[] {
  return series.get(id) ?? []
}

export async function sampleMetrics(id: string): Promise<MetricSample[]> {
  const now = Math.floor(Date.now() / 1000)
  const got = await api<MetricSample[]>(`/sandboxes/${encodeURIComponent(id)}/metrics`, {
    query: { start: now - 600, end: now + 5 },
  })
  const list = series.get(id) ?? []
  for (const m of Array.isArray(got) ? got : []) {
    const t = Date.parse(m.timestamp) || m.timestampUnix * 1000
    const last = list[list.length - 1]
    const lastT = last ? Date.parse(last.timestamp) || last.timestampUnix * 1000 : 0
    if (t > lastT) list.push(m)
  }
  const cutoff = Date.now() - KEEP_MS
  while (list.length > 0 && (Date.parse(list[0]!.timestamp) || list[0]!.timestampUnix * 1000) < cutoff) {
    list.shift()
  }
  series.set(id, list)
  return [...list]
}

export function forget(ids: Set<string>): void {
  for (const id of [...series.keys()]) if (!ids.has(id)) series.delete(id)
}
