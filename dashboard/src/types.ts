// The shapes moatd answers with (docs/dashboard-contract.md; E2B's for the sandbox routes).
// Fields the page does not rely on are optional: the page shows what is there.

export interface SessionInfo {
  team: { id: string; name: string; admin: boolean }
  key: { id: string; name: string }
  csrfToken: string
}

export type Metadata = Record<string, string>

export interface ListedSandbox {
  sandboxID: string
  templateID: string
  alias?: string
  clientID?: string
  startedAt: string
  endAt?: string
  cpuCount: number
  memoryMB: number
  diskSizeMB?: number
  metadata?: Metadata | null
  state: string
  envdVersion?: string
  hostID?: string | null
}

export interface MetricSample {
  timestamp: string
  timestampUnix: number
  cpuCount: number
  cpuUsedPct: number
  memUsed: number
  memTotal: number
  diskUsed?: number
  diskTotal?: number
}

export interface History {
  sandboxID: string
  teamID?: string
  templateID: string
  createdBy?: { keyID?: string; keyName?: string } | null
  metadata?: Metadata | null
  hostID?: string | null
  cpuCount?: number
  memoryMB?: number
  parent?: { kind: 'fork' | 'snapshot' | string; id: string } | null
  createdAt: string
  endedAt?: string | null
  state: string
  endReason?: 'killed' | 'timeout' | 'error' | 'host_lost' | string | null
  endedBy?: string | { keyID?: string; keyName?: string } | null
  endDetail?: string | null
  egressBytes?: number
  ingressBytes?: number
  durationMs?: number
}

export interface HistoryEvent {
  seq: number
  at: string
  kind: string
  durationMs?: number | null
  detail?: unknown
}

export interface HistoryDetail extends History {
  events?: HistoryEvent[]
  children?: History[]
}

export interface Page<T> {
  items: T[]
  nextToken?: string
}

export interface StreamHeadTail {
  head?: string
  tail?: string
  bytes?: number
}

export interface CommandRecord {
  id: number
  kind?: string
  command: string
  user?: string
  cwd?: string
  startedAt: string
  endedAt?: string | null
  durationMs?: number | null
  exitCode?: number | null
  signal?: string | null
  error?: string | null
  stdout?: StreamHeadTail
  stderr?: StreamHeadTail
}

export interface CommandPage {
  items: CommandRecord[]
  nextBefore?: number
}

export interface Template {
  templateID: string
  buildID?: string | null
  cpuCount?: number
  memoryMB?: number
  diskSizeMB?: number
  public?: boolean
  aliases?: string[]
  names?: string[]
  createdAt?: string
  updatedAt?: string
  lastSpawnedAt?: string | null
  spawnCount?: number
  buildCount?: number
  buildStatus?: string
}

export interface TemplateBuild {
  buildID: string
  status: string
  createdAt?: string
  updatedAt?: string
  finishedAt?: string | null
  cpuCount?: number
  memoryMB?: number
  diskSizeMB?: number
  reason?: unknown
}

export interface TemplateDetail extends Template {
  builds?: TemplateBuild[]
  tags?: { tag: string; buildID: string }[]
}

export interface BuildLogEntry {
  timestamp: string
  level?: string
  message: string
  step?: string
}

export interface BuildStatus {
  templateID: string
  buildID: string
  status: string
  logEntries?: BuildLogEntry[]
  logs?: string[]
  reason?: unknown
}

export interface Snapshot {
  snapshotID: string
  names?: string[]
  sandboxID?: string
  createdAt?: string
}

export interface ApiKey {
  id: string
  name: string
  mask?: string
  teamID?: string
  createdAt?: string
}

export interface CreatedKey extends ApiKey {
  key: string
  teamName?: string
}

export interface UsageNumbers {
  runningSeconds: number
  pausedSeconds: number
  vcpuSeconds?: number
  gibSeconds?: number
  idleSeconds?: number
  creates?: number
  forks?: number
  egressBytes?: number
  ingressBytes?: number
  snapshotByteHours?: number
}

export interface UsageRow extends UsageNumbers {
  bucket: string
  templateID?: string
}

export interface Usage {
  from: string
  to: string
  groupBy: string[]
  rows: UsageRow[]
  totals?: UsageNumbers
}

export interface AuditEntry {
  seq: number
  at: string
  teamID?: string
  keyID?: string
  keyName?: string
  source?: string
  requestID?: string
  action: string
  target?: string
  outcome: 'ok' | 'error' | string
  status?: number
  detail?: unknown
}

export interface Host {
  hostID: string
  state: string
  endpoint?: string
  sandboxes?: number
  vcpuTotal?: number
  vcpuReserved?: number
  memoryMBTotal?: number
  memoryMBReserved?: number
  lastHeartbeat?: string
}
