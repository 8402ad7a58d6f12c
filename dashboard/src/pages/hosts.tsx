// A fleet's hosts (GET /hosts, admin keys only).
import { api } from '../api'
import { Empty, ErrorBox, Loading, StateBadge, usePoll } from '../components'
import { fmtTime } from '../format'
import type { Host } from '../types'

export function HostsPage() {
  const hosts = usePoll(() => api<Host[]>('/hosts'), 5000, [])
  return (
    <div class="page" data-testid="page-hosts">
      <div class="page-head">
        <h1>Hosts</h1>
        <span class="muted">the fleet's hosts as their agents registered them</span>
      </div>
      {hosts.loading && !hosts.data ? <Loading what="hosts" /> : null}
      <ErrorBox error={hosts.error} />
      {hosts.data && hosts.data.length === 0 ? <Empty>No host is registered (a single moatd has no fleet).</Empty> : null}
      {hosts.data && hosts.data.length > 0 ? (
        <table class="grid" data-testid="hosts-table">
          <thead>
            <tr>
              <th>Host</th>
              <th>State</th>
              <th>Endpoint</th>
              <th>Sandboxes</th>
              <th>vCPUs reserved</th>
              <th>Memory reserved</th>
              <th>Last heartbeat</th>
            </tr>
          </thead>
          <tbody>
            {hosts.data.map((h) => (
              <tr key={h.hostID} class={h.state === 'lost' ? 'failed' : ''}>
                <td class="mono">{h.hostID}</td>
                <td>
                  <StateBadge state={h.state} />
                </td>
                <td class="mono">{h.endpoint}</td>
                <td class="num">{h.sandboxes}</td>
                <td class="num">
                  {h.vcpuReserved} / {h.vcpuTotal}
                </td>
                <td class="num">
                  {h.memoryMBReserved} / {h.memoryMBTotal} MiB
                </td>
                <td class="nowrap">{fmtTime(h.lastHeartbeat)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : null}
    </div>
  )
}
