import { isValidName } from './keys';

/**
 * A host's view of its peers (/views/<name>, keys.ts): per peer its state, path and RTT, plus the
 * host's own reflexive address and NAT kind. Written by the agent on its liveness lease when what
 * it sees changes materially (agent/view.ts), read only by `cladnet dashboard`. Nothing in it is
 * trusted for anything: it is a picture, checked for shape, and a host may only write its own key
 * (docs/security.md). Version 1:
 *
 *   { "version": 1, "host": "h1", "network": "demo", "at": "2026-12-02T18:00:00.000Z",
 *     "reflexive": "198.18.1.2:51820" | null, "nat": "none" | "eim" | "varies" | "unknown",
 *     "peers": { "h2": { "state": "up", "path": "private", "rttMs": 0.4 },
 *                "h3": { "state": "up", "path": "relayed", "via": "h2", "rttMs": 1.2 } } }
 *
 * `path` folds the status document's path and scope into one word: 'private' and 'public' (direct
 * over a network both hosts share, or over public addresses), 'relayed' (with `via`), or 'none'.
 */
export type ViewPeerState = 'up' | 'connecting' | 'down';
export type ViewPath = 'private' | 'public' | 'relayed' | 'none';
export type NatKind = 'none' | 'eim' | 'varies' | 'unknown';

export interface ViewPeer {
  readonly state: ViewPeerState;
  readonly path: ViewPath;
  readonly via?: string;
  readonly rttMs: number | null;
}

export interface ViewRecord {
  readonly version: 1;
  readonly host: string;
  readonly network: string;
  readonly at: string;
  readonly reflexive: string | null;
  readonly nat: NatKind;
  readonly peers: Readonly<Record<string, ViewPeer>>;
}

/** Largest view accepted or written: about 60 bytes a peer, so some 4,000 peers. */
export const VIEW_CAP_BYTES = 256 * 1024;
/** Most peers a view may list. */
export const VIEW_MAX_PEERS = 4096;

const STATES: readonly string[] = ['up', 'connecting', 'down'];
const PATHS: readonly string[] = ['private', 'public', 'relayed', 'none'];
const NATS: readonly string[] = ['none', 'eim', 'varies', 'unknown'];
const ENDPOINT_RE = /^(\d{1,3}\.){3}\d{1,3}:\d{1,5}$|^\[[0-9a-f:.]+\]:\d{1,5}$/i;
const ISO_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$/;

export type ParsedView = { ok: true; value: ViewRecord } | { ok: false; error: string };

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Checks a stored view: JSON of the shape above, at most VIEW_CAP_BYTES, `host` and `network` the
 * ones its key names (a view under another host's key is forged), peers with valid names other
 * than the host itself. The error names the first bad field.
 */
export function parseViewRecord(raw: string | Buffer, expect: { network: string; host: string }): ParsedView {
  const size = typeof raw === 'string' ? Buffer.byteLength(raw) : raw.length;
  if (size > VIEW_CAP_BYTES) return { ok: false, error: `view is ${size} bytes, more than ${VIEW_CAP_BYTES}` };
  let o: unknown;
  try {
    o = JSON.parse(typeof raw === 'string' ? raw : raw.toString('utf8'));
  } catch (e) {
    return { ok: false, error: `not JSON: ${(e as Error).message}` };
  }
  if (!isObject(o)) return { ok: false, error: 'expected a JSON object' };
  if (o['version'] !== 1) return { ok: false, error: 'version: expected 1' };
  if (o['host'] !== expect.host) return { ok: false, error: `host: ${JSON.stringify(o['host'])} does not match the key (${expect.host})` };
  if (o['network'] !== expect.network) return { ok: false, error: `network: ${JSON.stringify(o['network'])} is not ${expect.network}` };
  const at = o['at'];
  if (typeof at !== 'string' || !ISO_RE.test(at) || Number.isNaN(Date.parse(at))) return { ok: false, error: 'at: not an ISO 8601 time' };
  const reflexive = o['reflexive'] ?? null;
  if (reflexive !== null && (typeof reflexive !== 'string' || !ENDPOINT_RE.test(reflexive))) return { ok: false, error: 'reflexive: not an address:port' };
  const nat = o['nat'];
  if (typeof nat !== 'string' || !NATS.includes(nat)) return { ok: false, error: `nat: expected one of ${NATS.join(', ')}` };
  const rawPeers = o['peers'];
  if (!isObject(rawPeers)) return { ok: false, error: 'peers: expected an object' };
  const names = Object.keys(rawPeers);
  if (names.length > VIEW_MAX_PEERS) return { ok: false, error: `peers: more than ${VIEW_MAX_PEERS}` };
  const peers: Record<string, ViewPeer> = {};
  for (const name of names) {
    const p = rawPeers[name];
    const where = `peers.${name.slice(0, 64)}`;
    if (!isValidName(name) || name === expect.host) return { ok: false, error: `${where}: not a peer name` };
    if (!isObject(p)) return { ok: false, error: `${where}: expected an object` };
    if (typeof p['state'] !== 'string' || !STATES.includes(p['state'])) return { ok: false, error: `${where}.state: expected up, connecting or down` };
    if (typeof p['path'] !== 'string' || !PATHS.includes(p['path'])) return { ok: false, error: `${where}.path: expected ${PATHS.join(', ')}` };
    const via = p['via'];
    if (via !== undefined && (!isValidName(via) || p['path'] !== 'relayed')) return { ok: false, error: `${where}.via: only a relay's name on a relayed path` };
    const rtt = p['rttMs'] ?? null;
    if (rtt !== null && (typeof rtt !== 'number' || !Number.isFinite(rtt) || rtt < 0 || rtt > 600_000)) {
      return { ok: false, error: `${where}.rttMs: expected milliseconds or null` };
    }
    peers[name] = {
      state: p['state'] as ViewPeerState,
      path: p['path'] as ViewPath,
      ...(via === undefined ? {} : { via: via as string }),
      rttMs: rtt as number | null,
    };
  }
  return { ok: true, value: { version: 1, host: expect.host, network: expect.network, at, reflexive: reflexive as string | null, nat: nat as NatKind, peers } };
}

/** The stored form (peers sorted by name, so equal views serialize equally). */
export function serializeViewRecord(v: ViewRecord): string {
  const peers: Record<string, ViewPeer> = {};
  for (const name of Object.keys(v.peers).sort()) peers[name] = v.peers[name]!;
  return JSON.stringify({ version: 1, host: v.host, network: v.network, at: v.at, reflexive: v.reflexive, nat: v.nat, peers });
}
