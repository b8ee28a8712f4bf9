/** The status document, version 1 (DESIGN.md section 3). Plain data: imports nothing. */
export interface StatusPeer {
  name: string;
  overlayIp: string;
  /** Its IPv6 overlay address (the network's prefix around overlayIp, src/control/overlay6.ts). */
  overlayIp6?: string;
  publicKey: string;
  /** "a.b.c.d:port", or "via NAME" when relayed. */
  endpoint: string;
  /** How packets reach the peer now; 'none' while no path has answered lately. */
  path: 'direct' | 'relayed' | 'none';
  /** For a direct path: 'private' (a network both hosts share) or 'public'. */
  pathScope?: 'private' | 'public' | null;
  /** For a relayed path: the relay's host name. */
  via?: string | null;
  /** When the path (endpoint or kind) last changed. */
  lastPathChange?: string | null;
  state: 'up' | 'connecting' | 'down';
  /** When the newest session with this peer was made (handshake completed). */
  lastHandshake: string | null;
  /** When the last authenticated packet from this peer arrived. */
  lastRx: string | null;
  rxBytes: number;
  txBytes: number;
  rxPackets: number;
  txPackets: number;
  rttMs: number | null;
  lastEndpointChange: string | null;
  /**
   * What etcd holds for this peer now: its record ('present'; 'absent' when deleted, 'invalid'
   * when replaced by one that fails the checks: the last valid record is used meanwhile) and
   * whether its alive key is there, as of the last read of etcd (absent when the agent started
   * from its cache and has not read etcd yet). Hints only: membership is the certificate
   * (docs/security.md).
   */
  etcd?: { record: 'present' | 'absent' | 'invalid'; alive: boolean };
}

export interface StatusDocument {
  version: 1;
  self: {
    name: string;
    network: string;
    overlayIp: string;
    /** Our IPv6 overlay address, and the network's IPv6 prefix it is in (src/control/overlay6.ts). */
    overlayIp6?: string;
    overlayPrefix6?: string;
    publicKey: string;
    listenPort: number;
    endpoints: string[];
    interface: string;
    mtu: number;
    startedAt: string;
    /** The cladnet package version and the Node.js version the agent runs on. */
    version?: string;
    nodeVersion?: string;
    /** AEAD implementation in use and whether TUN offloads are on. */
    crypto: string;
    offload: boolean;
    /**
     * With several data-plane workers (`--workers`), what each moved: packets received and sent
     * by worker k at index k (their sums are the totals everywhere else). Absent with one worker.
     */
    workers?: { rxPackets: number; txPackets: number }[];
    /** Our public address as peers (or STUN servers) see it, and what that says about our NAT. */
    reflexive?: string | null;
    nat?: 'none' | 'eim' | 'varies' | 'unknown';
    /** This host relays for its peers. */
    relay?: boolean;
    /** When our own addresses last changed (or we woke from a suspend), and why. */
    lastLocalChange?: { at: string; reason: string } | null;
    /** The prefixes this host serves as a gateway (`--advertise-routes`), and whether it source-NATs into them. */
    advertisedRoutes?: string[];
    snatRoutes?: boolean;
    /** Host routes keeping peer endpoints on the underlay where a subnet route covers them (src/os/routes/pins.ts). */
    endpointPins?: { dst: string; gateway?: string; dev: string }[];
    /** The agent process (all its threads): resident memory and CPU time used since start. */
    process?: { residentBytes: number; cpuSeconds: number };
  };
  /**
   * invalidRecords counts host records skipped (untrusted ones included); untrustedRecords those
   * that failed the certificate checks; revokedHosts the hosts skipped now as revoked.
   */
  etcd: {
    connected: boolean;
    invalidRecords: number;
    untrustedRecords?: number;
    revokedHosts?: number;
    /** Whether etcd answers calls ('unknown' before the first); retries back off up to 30 s while 'down'. */
    link?: 'unknown' | 'up' | 'down';
    /** While down: since when (ISO time). */
    downSince?: string | null;
    /** Outages seen since start. */
    outages?: number;
    /**
     * Where the peer set came from: etcd, or the cache file ('cache': etcd has not answered
     * since the agent started; 'none': neither yet).
     */
    peersFrom?: 'etcd' | 'cache' | 'none';
  };
  /** Handshake counters (sent, completed, rekeys) and refusals by reason. */
  handshake?: {
    initiationsSent: number;
    responsesSent: number;
    completed: number;
    cookiesSent: number;
    rekeys: number;
    drops: Record<string, number>;
  };
  peers: StatusPeer[];
  /**
   * Overlay addresses claimed by two valid certificates of different names: `winner` (issued
   * earlier, then lower serial) holds the address, `loser` is refused by this agent. Normally empty;
   * an entry means the network key signed two certificates for one address (docs/security.md).
   */
  conflicts?: StatusConflict[];
  /**
   * Subnet routes through gateways: each prefix installed into the overlay, the peer serving it and
   * the peers standing by for it (same prefix, failover order); advertised routes refused now
   * (not covered by the certificate, overlapping the overlay or our own), and refusals seen since start.
   */
  subnets?: {
    routes: { prefix: string; gateway: string; standby: string[] }[];
    refused: { gateway: string; prefix: string; reason: string }[];
    refusedTotal: number;
  };
  dataplane: {
    rxPackets: number;
    rxBytes: number;
    txPackets: number;
    txBytes: number;
    /** Datagrams this host passed on between two other peers (as a relay). */
    relayedPackets?: number;
    relayedBytes?: number;
    /**
     * Handshake messages and STUN answers the data plane let through to the control thread
     * (within the flood limits, docs/security.md); the refused ones are under drops.
     */
    handshakesPassed?: number;
    /** Cookie replies the data plane sent to initiations over that budget. */
    handshakeCookies?: number;
    /** What the offloads did (absent from agents that predate them). */
    offloads?: StatusOffloads;
    drops: Record<string, number>;
  };
  /** The network policy (security groups) as this host applies it; absent from older agents. */
  policy?: StatusPolicy;
}

/**
 * The network policy in status: which signed document is in use (serial null: none, members
 * reach members), values from etcd ignored (invalid: garbled or forged; stale: not newer), and
 * what it did here since it was applied: packets denied by default, replies to our own flows
 * let in, and packets each rule allowed (`here`: the rule's `to` names this host).
 */
export interface StatusPolicy {
  serial: number | null;
  issued: string | null;
  appliedAt: string | null;
  /** Nothing is filtered on this host (no policy, or a rule lets anything in). */
  open: boolean;
  invalid: number;
  stale: number;
  denied: number;
  replies: number;
  rules: { index: number; id: string | null; from: string; to: string; proto: string; ports: string | null; here: boolean; packets: number }[];
}

/** What the data plane's offloads did (docs/performance.md). */
export interface StatusOffloads {
  /** UDP GSO is on (it turns itself off when the kernel keeps refusing it). */
  udpGso: boolean;
  /** GSO messages sent, the datagrams they carried, and runs the kernel refused. */
  gsoMessages: number;
  gsoDatagrams: number;
  gsoRefused: number;
  /** UDP GRO buffers that held more than one datagram, and those datagrams. */
  groMessages: number;
  groDatagrams: number;
  /** Coalesced super-packets written to the TUN, and the segments they held. */
  tunSuperPackets: number;
  tunCoalesced: number;
}

/** A certificate as the status shows it. */
export interface StatusCertRef {
  name: string;
  serial: string;
  issued: string;
}

export interface StatusConflict {
  overlayIp: string;
  winner: StatusCertRef;
  loser: StatusCertRef;
}
