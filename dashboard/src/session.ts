import { createContext } from 'preact'
import { useContext } from 'preact/hooks'
import type { SessionInfo } from './types'

export const SessionContext = createContext<SessionInfo | null>(null)

export function useSession(): SessionInfo {
  const s = useContext(SessionContext)
  if (!s) throw new Error('no session')
  return s
}
