/** The status document, version 1 (DESIGN.md section 3). Plain data: imports nothing. */
export interface StatusPeer {
  name: string;
  overlayIp: string;
  publicKey: string;
  endpoint: string;
  path: 'direct' | 'none';
  state: 'up' | 'connecting' | 'down';
  lastHandshake: string | null;
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
  etcd: { connected: boolean; invalidRecords: number };
  peers: StatusPeer[];
  dataplane: {
    rxPackets: number;
    rxBytes: number;
    txPackets: number;
    txBytes: number;
    drops: Record<string, number>;
  };
}
