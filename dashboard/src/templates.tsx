// Template names by id (GET /templates), for the pages that list sandboxes: moatd's sandbox
// lists name a custom template by its id only. Fetched at most once a minute; a failure (custom
// templates off) leaves the ids as they are.
import { useEffect, useState } from 'preact/hooks'
import { api } from './api'
import type { Template } from './types'

let cache: Promise<Map<string, string>> | null = null
let cachedAt = 0

function load(): Promise<Map<string, string>> {
  if (!cache || Date.now() - cachedAt > 60_000) {
    cachedAt = Date.now()
    cache = api<Template[]>('/templates').then(
      (list) => {
        const m = new Map<string, string>()
        for (const t of Array.isArray(list) ? list : []) {
          const name = t.aliases?.[0] ?? t.names?.[0]
          if (name && name !== t.templateID) m.set(t.templateID, name)
        }
        return m
      },
      () => {
        cache = null
        return new Map<string, string>()
      },
    )
  }
  return cache
}

export function useTemplateNames(): Map<string, string> {
  const [names, setNames] = useState<Map<string, string>>(new Map())
  useEffect(() => {
    let live = true
    load().then((m) => live && setNames(m))
    return () => {
      live = false
    }
  }, [])
  return names
}

export function TemplateName(props: { id: string; alias?: string; names: Map<string, string> }) {
  const name = props.alias && props.alias !== props.id ? props.alias : props.names.get(props.id)
  if (!name) return <span class="mono">{props.id}</span>
  return (
    <span title={props.id}>
      {name} <span class="muted mono small">{props.id}</span>
    </span>
  )
}
