// The web terminal: @xterm/xterm on the WebSocket of docs/dashboard-contract.md ("Web terminal").
// moatd runs /bin/bash -l on a PTY in the sandbox; frames are JSON text both ways.
import { FitAddon } from '@xterm/addon-fit'
import { Terminal } from '@xterm/xterm'
import { useEffect, useRef, useState } from 'preact/hooks'
import { currentCsrf } from '../api'

type Status = 'connecting' | 'open' | 'closed' | 'error'

function decodeBase64(s: string): Uint8Array {
  const bin = atob(s)
  const out = new Uint8Array(bin.length)
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i)
  return out
}

export function terminalUrl(id: string, cols: number, rows: number): string {
  const scheme = window.location.protocol === 'https:' ? 'wss' : 'ws'
  const q = new URLSearchParams({ csrf: currentCsrf() ?? '', cols: String(cols), rows: String(rows) })
  return `${scheme}://${window.location.host}/dashboard/api/sandboxes/${encodeURIComponent(id)}/terminal?${q}`
}

export function TerminalPanel(props: { id: string; onClose: () => void }) {
  const box = useRef<HTMLDivElement>(null)
  const [status, setStatus] = useState<Status>('connecting')
  const [message, setMessage] = useState('')
  useEffect(() => {
    const el = box.current
    if (!el) return
    const term = new Terminal({
      cursorBlink: true,
      fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace',
      fontSize: 13,
      scrollback: 5000,
      theme: { background: '#111418', foreground: '#e6e6e6' },
    })
    const fit = new FitAddon()
    term.loadAddon(fit)
    term.open(el)
    try {
      fit.fit()
    } catch {
      // not laid out yet: the default size stays
    }
    const ws = new WebSocket(terminalUrl(props.id, term.cols, term.rows))
    let closedByUs = false
    const send = (frame: object) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame))
    }
    ws.onopen = () => {
      setStatus('open')
      term.focus()
    }
    ws.onmessage = (ev: MessageEvent) => {
      if (typeof ev.data !== 'string') return
      let f: { type?: string; data?: string; exitCode?: number; message?: string }
      try {
        f = JSON.parse(ev.data)
      } catch {
        return
      }
      if (f.type === 'output' && typeof f.data === 'string') {
        term.write(decodeBase64(f.data))
      } else if (f.type === 'exit') {
        term.write(`\r\n\x1b[2m[the shell exited with code ${f.exitCode ?? '?'}]\x1b[0m\r\n`)
        setStatus('closed')
        setMessage(`The shell exited with code ${f.exitCode ?? '?'}.`)
      } else if (f.type === 'error') {
        setStatus('error')
        setMessage(f.message ?? 'the terminal failed')
      }
    }
    ws.onerror = () => {
      if (!closedByUs) {
        setStatus('error')
        setMessage((m) => m || 'The terminal connection failed.')
      }
    }
    ws.onclose = (ev: CloseEvent) => {
      if (closedByUs) return
      setStatus((s) => (s === 'error' ? s : 'closed'))
      setMessage((m) => m || `The terminal connection closed${ev.reason ? `: ${ev.reason}` : ''}.`)
    }
    const onData = term.onData((data) => send({ type: 'input', data }))
    const onResize = term.onResize(({ cols, rows }) => send({ type: 'resize', cols, rows }))
    const ro = new ResizeObserver(() => {
      try {
        fit.fit()
      } catch {
        // hidden
      }
    })
    ro.observe(el)
    return () => {
      closedByUs = true
      ro.disconnect()
      onData.dispose()
      onResize.dispose()
      ws.close()
      term.dispose()
    }
  }, [props.id])
  return (
    <div class="terminal-panel" data-testid="terminal-panel">
      <div class="terminal-bar">
        <span class={`badge term-${status}`} data-testid="terminal-status">
          {status}
        </span>
        <span class="muted small">{message || 'bash -l in the sandbox; closing the panel ends it'}</span>
        <button type="button" onClick={props.onClose} data-testid="terminal-close">
          Close
        </button>
      </div>
      <div class="terminal" ref={box} data-testid="terminal" />
    </div>
  )
}
