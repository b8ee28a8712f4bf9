import type { MeshBed } from '../../src/testbed/mesh';
import type { Topology, TopologyHost } from '../../src/testbed/topology';

/**
 * One implementation under test, brought up between two host namespaces of the test bed.
 * `a` is the client side (h1), `b` the server side (h2); traffic flows a -> b.
 */
export const IMPLEMENTATIONS = ['veth', 'cladnet', 'cladnet-rekey', 'cladnet-policy', 'wireguard-go-new', 'wireguard-go', 'nebula'] as const;
export type ImplName = (typeof IMPLEMENTATIONS)[number];

export interface TunnelEnd {
  readonly ns: string;
  /** The address the other end reaches this one at (overlay; underlay for veth). */
  readonly ip: string;
  /** The device that address sits on (checked with `ip route get`). */
  readonly dev: string;
}

export interface TunnelProc {
  readonly host: string;
  readonly pid: number;
  /** Expected /proc/PID/comm, checked before measuring (guards against measuring the wrong process). */
  readonly comm: string;
}

export interface Tunnel {
  readonly a: TunnelEnd;
  readonly b: TunnelEnd;
  /** The processes that carry the tunnel on both ends (none for veth). */
  readonly procs: readonly TunnelProc[];
  /** The UDP port each end's tunnel socket listens on (for its kernel drop counter); none for veth. */
  readonly udpPort?: number;
  /** Facts recorded in the results (MTU, cipher, ...). */
  readonly notes: Readonly<Record<string, string | number>>;
  /** Throws when the tunnel is not up yet by the implementation's own account (beyond ping). */
  ready?(): Promise<void>;
  /** Implementation-specific numbers recorded after the round (e.g. cladnet's drop counters). */
  extra?(): Promise<Record<string, unknown>>;
  /**
   * Handshake rekeys so far, by host (cladnet: each agent's `status --json` handshake.rekeys).
   * Read just before and just after the 1-stream TCP test (outside its CPU window); the suite
   * records both readings and the difference in detail.tcp1.rekeys.
   */
  rekeys?(): Promise<Record<string, number>>;
  /** Ends the tunnel's processes and removes what it put outside the namespaces. Never throws. */
  stop(): Promise<void>;
}

export interface BenchContext {
  readonly topo: Topology;
  /** The etcd-backed mesh bed (present when cladnet or cladnet-rekey is measured). */
  readonly bed: MeshBed | null;
  readonly a: TopologyHost;
  readonly b: TopologyHost;
  /** Nebula's cipher: `aes` (its default) or `chachapoly`. */
  readonly nebulaCipher: 'aes' | 'chachapoly';
  readonly log: (msg: string) => void;
}

export interface Implementation {
  readonly name: ImplName;
  /** Commands that must be on PATH. */
  readonly needs: readonly string[];
  /** Beyond `needs`: why it cannot run here (e.g. a binary outside PATH is absent), or null. */
  available?(): Promise<string | null>;
  /** Anchor version, for the results (null when unknown). */
  version(): Promise<string | null>;
  start(ctx: BenchContext): Promise<Tunnel>;
}
