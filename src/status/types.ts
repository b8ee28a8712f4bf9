/** The status document, version 1 (DESIGN.md section 3). Plain data: imports nothing. */
export interface StatusPeer {
  name: string;
  overlayIp: string;
  publicKey: string;
  endpoint: string;
  path: 'direct' | 'none';
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
}

export interface StatusDocument {
  version: 1;
  self: {
    name: string;
    network: string;
    overlayIp: string;
    publicKey: string;
    listenPort: number;
    endpoints: string[];
    interface: string;
    mtu: number;
    startedAt: string;
    /** AEAD implementation in use and whether TUN offloads are on. */
    crypto: string;
    offload: boolean;
  };
  /**
   * invalidRecords counts host records skipped (untrusted ones included); untrustedRecords those
   * that failed the certificate checks; revokedHosts the hosts skipped now as revoked.
   */
  etcd: { connected: boolean; invalidRecords: number; untrustedRecords?: number; revokedHosts?: number };
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
  dataplane: {
    rxPackets: number;
    rxBytes: number;
    txPackets: number;
    txBytes: number;
    drops: Record<string, number>;
  };
}
