/**
 * Answers of the diagnostic routes on the local API (src/agent/diagnostics.ts):
 * `POST /v1/ping?peer=NAME|IP&timeoutMs=N` and `POST /v1/netcheck?timeoutMs=N`, version 1.
 * Plain data: imports nothing.
 */

/** The path a reply came back on. */
export interface DiagPath {
  path: 'direct' | 'relayed';
  /** "a.b.c.d:port" for a direct path, null when relayed. */
  endpoint: string | null;
  /** For a direct path: 'private' (a network both hosts share) or 'public'. */
  scope: 'private' | 'public' | null;
  /** For a relayed path: the relay's host name. */
  via: string | null;
}

/** One diagnostic ping: the peer's answer with its path and round trip, or why there is none. */
export interface PingAnswer {
  version: 1;
  peer: { name: string; overlayIp: string };
  reply: (DiagPath & { rttMs: number }) | null;
  /** Without a reply: 'timeout' (sent, no answer) or 'no-session' (no handshake completed in time). */
  error: 'timeout' | 'no-session' | null;
  /** There was no session with the peer: this ping started a handshake first. */
  handshake: boolean;
}

/** Someone off our networks who told us where they saw us. */
export interface NetcheckObservation {
  /** "stun ip:port" or the peer's name. */
  observer: string;
  kind: 'stun' | 'peer';
  observerIp: string;
  seen: string;
}

export interface NetcheckStun {
  server: string;
  /** From the first transmission to the answer (includes retransmission waits); null: no answer. */
  rttMs: number | null;
  mapped: string | null;
}

export interface NetcheckPeer {
  name: string;
  overlayIp: string;
  state: 'up' | 'connecting' | 'down';
  /** Certified and configured to relay for others. */
  relay: boolean;
  /** The path our ping went and came back on (null: no answer or no session). */
  reply: (DiagPath & { rttMs: number }) | null;
  error: 'timeout' | 'no-session' | null;
  /** Where this peer saw our ping come from (direct paths only). */
  seen: string | null;
}

export interface NetcheckReport {
  version: 1;
  self: { name: string; overlayIp: string; listenPort: number; endpoints: string[] };
  /** Our public address and port when every observer agrees (else the newest one). */
  reflexive: string | null;
  /** 'eim': one mapping for every destination; 'varies': one per destination; 'none': no NAT. */
  nat: 'none' | 'eim' | 'varies' | 'unknown';
  observations: NetcheckObservation[];
  stun: NetcheckStun[];
  peers: NetcheckPeer[];
  /** How long the measurement took. */
  tookMs: number;
}
