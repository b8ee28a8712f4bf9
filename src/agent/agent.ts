/**
 * One agent process: wiring and lifecycle. Start order (nothing on the host is touched before
 * the config is valid and the key, network and overlay address are known):
 *
 *   1. identity    X25519 key pair from the state dir (created once, 0600)
 *   2. network     spec + overlay address lease from etcd (or the last known ones from the
 *                  state dir when etcd is unreachable at start)
 *   3. sockets     UDP socket bound, TUN opened, link/address/MTU applied declaratively
 *   4. data plane  the two worker threads start on those descriptors
 *   5. registry    publish our record, hold liveness, watch peers -> derive keys -> workers
 *   6. status      local API on the unix socket
 *
 * Stop (SIGTERM/SIGINT) runs it backwards: liveness released (the host record stays, so a
 * restart reuses key and address), workers stopped, TUN closed (the kernel removes the device
 * with its addresses and routes), socket closed.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Etcd3 } from 'etcd3';
import type { AgentConfig } from '../config/config';
import { CladnetError, isCladnetError } from '../errors';
import type { Logger } from '../log';
import { StaticKeyAgreement, type KeyAgreement, type KeyPair } from '../crypto/keys';
import { createEtcd } from '../control/etcd';
import { leaseOverlayIp } from '../control/leases';
import { getNetwork } from '../control/networks';
import type { HostRecord, NetworkSpec } from '../control/records';
import { parseNetworkSpec } from '../control/records';
import { Registry, type PeerSnapshot } from '../control/registry';
import { DataplaneEngine } from '../dataplane/engine';
import type { WorkerPeer } from '../dataplane/peer';
import { PEER_UP_MS } from '../dataplane/outbound';
import {
  MAX_PEERS,
  P_LAST_ROAM,
  P_LAST_RX,
  P_RTT,
  P_RX_BYTES,
  P_RX_PKTS,
  P_TX_BYTES,
  P_TX_PKTS,
  T_RX_BYTES,
  T_RX_PKTS,
  T_TX_BYTES,
  T_TX_PKTS,
} from '../dataplane/stats';
import { UNDERLAY_OVERHEAD, OVERHEAD } from '../dataplane/wire';
import { openTun, type TunDevice } from '../os/tun/tun';
import { openUdpSocket, type UdpSocket } from '../os/udp/udp';
import { RouteManager } from '../os/routes/routes';
import { execRunner } from '../os/runner';
import { systemAddresses, type AddressSource } from '../os/netmon';
import { StatusServer } from '../status/server';
import type { StatusDocument, StatusPeer } from '../status/types';
import { formatEndpoint, formatIpv4, formatPrefix, parseEndpoint, parseIpv4, parseOverlayCidr } from '../util/ipv4';
import { loadOrCreateKeyPair } from './keystore';

const STATE_FILE = 'state.json';

interface SavedState {
  version: 1;
  network: NetworkSpec;
  overlayIp: string;
}

interface PeerEntry {
  slot: number;
  record: HostRecord;
  worker: WorkerPeer;
  addedAt: number;
  /** Endpoint the data plane moved to (roaming), when it differs from the record's. */
  roamed?: string;
}

export class Agent {
  private etcd?: Etcd3;
  private registry?: Registry;
  private engine?: DataplaneEngine;
  private tun?: TunDevice;
  private udp?: UdpSocket;
  private status?: StatusServer;
  private keys!: KeyPair;
  private kx!: KeyAgreement;
  private network!: NetworkSpec;
  private overlayIp = '';
  private mtu = 0;
  private endpoints: string[] = [];
  private readonly peers = new Map<string, PeerEntry>();
  private readonly freeSlots: number[] = [];
  private nextSlot = 0;
  private readonly startedAt = new Date();
  /** This run's id, published in the host record; peers key our sessions on it. */
  private readonly session = randomBytes(8).toString('hex');
  private stopping?: Promise<void>;
  private readonly log: Logger;

  constructor(
    private readonly cfg: AgentConfig,
    log: Logger,
    private readonly addresses: AddressSource = systemAddresses([cfg.interface]),
  ) {
    this.log = log.child({ component: 'agent', host: cfg.name });
  }

  async start(): Promise<void> {
    const cfg = this.cfg;
    // 1. identity
    const { keys, created } = await loadOrCreateKeyPair(cfg.stateDir);
    this.keys = keys;
    this.kx = await StaticKeyAgreement.create(keys);
    const publicKey = Buffer.from(keys.publicKey).toString('base64');
    this.log.info({ publicKey, created }, created ? 'created host key' : 'loaded host key');

    // 2. network and address
    this.etcd = createEtcd({ endpoints: [...cfg.etcd] });
    const saved = this.readState();
    try {
      this.network = await getNetwork(this.etcd, cfg.network);
      this.overlayIp = await leaseOverlayIp(this.etcd, this.network, cfg.name, publicKey);
    } catch (e) {
      if (!(isCladnetError(e) && e.transient && saved)) throw e;
      this.log.warn({ err: e.message }, 'etcd unreachable at start: using the last known network and address');
      this.network = saved.network;
      this.overlayIp = saved.overlayIp;
    }
    this.writeState();
    const prefix = parseOverlayCidr(this.network.cidr);
    this.mtu = this.network.mtu;

    // 3. sockets, device, link
    this.udp = openUdpSocket({ port: cfg.listenPort || this.network.port });
    this.tun = openTun(cfg.interface, { offload: cfg.offload });
    this.disableIpv6(cfg.interface);
    await new RouteManager(execRunner).set({
      ifname: cfg.interface,
      mtu: this.mtu,
      addresses: [`${this.overlayIp}/${prefix.len}`],
      routes: [],
    });

    // 4. data plane
    this.engine = await DataplaneEngine.start({
      tunFd: this.tun.fds[0]!,
      udpFd: this.udp.fd,
      mtu: this.mtu,
      vnet: this.tun.offload,
      crypto: cfg.crypto,
      batch: cfg.batch,
      onRoam: (slot, ip, port) => this.onRoam(slot, ip, port),
      onFatal: (message) => {
        this.log.fatal({ message }, 'data plane failed; stopping');
        void this.stop().then(() => process.exit(1));
      },
    });

    // 5. registry
    this.registry = new Registry({
      client: this.etcd,
      network: this.network,
      self: cfg.name,
      log: this.log,
      cacheFile: path.join(cfg.stateDir, 'peers.json'),
    });
    this.endpoints = this.localEndpoints();
    void this.register();
    await this.registry.watch((snap) => this.onPeers(snap));

    // 6. status
    this.status = new StatusServer(cfg.socket, () => this.statusDocument());
    await this.status.start();
    this.log.info(
      {
        overlayIp: this.overlayIp,
        interface: cfg.interface,
        port: this.udp.port,
        mtu: this.mtu,
        endpoints: this.endpoints,
        crypto: this.engine.cryptoName,
        offload: this.tun.offload,
      },
      'agent up',
    );
  }

  /** Publishes our record and holds liveness, retrying while etcd is unreachable. */
  private async register(): Promise<void> {
    let delay = 250;
    while (!this.stopping && this.registry) {
      try {
        const res = await this.registry.publish(this.hostRecord());
        if (!res.written) {
          this.log.error(
            { epoch: res.current.epoch, session: res.current.session },
            'another agent published under this host name after us; not overwriting it (two hosts with one name?)',
          );
          return;
        }
        await this.registry.startAlive();
        return;
      } catch (e) {
        if (this.stopping) return;
        this.log.warn({ err: (e as Error).message, retryMs: delay }, 'registration failed; retrying');
        await new Promise((r) => setTimeout(r, delay).unref());
        delay = Math.min(delay * 2, 5_000);
      }
    }
  }

  private hostRecord(): HostRecord {
    const cidrs = new Set<string>();
    for (const a of this.addresses.list()) {
      const ip = parseIpv4(a.address);
      if (ip === null) continue;
      const mask = a.prefixLen === 0 ? 0 : (0xffffffff << (32 - a.prefixLen)) >>> 0;
      cidrs.add(formatPrefix({ base: (ip & mask) >>> 0, len: a.prefixLen }));
    }
    return {
      version: 1,
      name: this.cfg.name,
      network: this.network.name,
      overlayIp: this.overlayIp,
      publicKey: Buffer.from(this.keys.publicKey).toString('base64'),
      endpoints: this.endpoints,
      hostCidrs: [...cidrs],
      listenPort: this.udp!.port,
      epoch: 0,
      updated: new Date().toISOString(),
      session: this.session,
    };
  }

  private localEndpoints(): string[] {
    const port = this.udp!.port;
    if (this.cfg.advertise.length > 0) return this.cfg.advertise.map((a) => (a.includes(':') ? a : `${a}:${port}`));
    return this.addresses
      .list()
      .filter((a) => a.address !== this.overlayIp)
      .map((a) => `${a.address}:${port}`);
  }

  private allocSlot(): number {
    const s = this.freeSlots.pop() ?? this.nextSlot++;
    if (s >= MAX_PEERS) throw new CladnetError('ESTATE', `more than ${MAX_PEERS} peers`);
    this.engine!.stats.resetPeer(s);
    return s;
  }

  /** The control plane's view of the peers changed: rebuild the worker peer set. */
  private onPeers(snap: PeerSnapshot): void {
    const seen = new Set<string>();
    for (const [name, rec] of snap) {
      const ep = rec.endpoints.map(parseEndpoint).find((e) => e !== null);
      const overlay = parseIpv4(rec.overlayIp);
      if (!ep || overlay === null) {
        this.log.warn({ peer: name }, 'peer has no usable endpoint; skipped');
        continue;
      }
      if (rec.publicKey === Buffer.from(this.keys.publicKey).toString('base64')) {
        this.log.warn({ peer: name }, 'peer claims our own public key (cloned VM image?); skipped');
        continue;
      }
      seen.add(name);
      const old = this.peers.get(name);
      const keyId = `${rec.publicKey}:${rec.session}`;
      if (old && old.worker.keyId === keyId) {
        old.worker = { ...old.worker, overlayIp: overlay, endpointIp: ep.ip, endpointPort: ep.port };
        if (old.record.endpoints[0] !== rec.endpoints[0]) old.roamed = undefined;
        old.record = rec;
        continue;
      }
      let session;
      try {
        session = this.kx.derive(new Uint8Array(Buffer.from(rec.publicKey, 'base64')), this.session, rec.session);
      } catch (e) {
        this.log.warn({ peer: name, err: (e as Error).message }, 'cannot agree keys with peer; skipped');
        continue;
      }
      const slot = old?.slot ?? this.allocSlot();
      this.peers.set(name, {
        slot,
        record: rec,
        addedAt: Date.now(),
        worker: {
          slot,
          name,
          overlayIp: overlay,
          allowed: [],
          endpointIp: ep.ip,
          endpointPort: ep.port,
          keyId,
          txKey: session.txKey,
          rxKey: session.rxKey,
          txIndex: session.txIndex,
          rxIndex: session.rxIndex,
        },
      });
      this.log.info(
        { peer: name, overlayIp: rec.overlayIp, endpoint: rec.endpoints[0] },
        old ? 'peer restarted: new session keys' : 'peer added',
      );
    }
    for (const [name, p] of this.peers) {
      if (seen.has(name)) continue;
      this.peers.delete(name);
      this.freeSlots.push(p.slot);
      this.log.info({ peer: name }, 'peer removed');
    }
    this.checkIndexCollisions();
    this.engine?.setPeers([...this.peers.values()].map((p) => p.worker));
  }

  /** Receiver indices come from public keys; two peers sharing one would confuse the inbound path. */
  private checkIndexCollisions(): void {
    const byIndex = new Map<number, string>();
    for (const [name, p] of this.peers) {
      const other = byIndex.get(p.worker.rxIndex);
      if (other !== undefined) {
        this.log.error({ peer: name, other }, 'receiver index collision; dropping the later peer');
        this.peers.delete(name);
        this.freeSlots.push(p.slot);
      } else byIndex.set(p.worker.rxIndex, name);
    }
  }

  private onRoam(slot: number, ip: number, port: number): void {
    for (const [name, p] of this.peers) {
      if (p.slot !== slot) continue;
      const ep = formatEndpoint(ip, port);
      p.roamed = ep;
      this.log.info({ peer: name, endpoint: ep }, 'peer endpoint moved');
    }
  }

  private disableIpv6(ifname: string): void {
    // The overlay carries IPv4 only; without this the kernel sends router solicitations into it.
    try {
      fs.writeFileSync(`/proc/sys/net/ipv6/conf/${ifname}/disable_ipv6`, '1');
    } catch {
      /* no IPv6 on this host: nothing to disable */
    }
  }

  statusDocument(): StatusDocument {
    const stats = this.engine!.stats;
    const now = Date.now();
    const peers: StatusPeer[] = [...this.peers.entries()]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([name, p]) => {
        const lastRx = stats.peer(p.slot, P_LAST_RX);
        const rtt = stats.peer(p.slot, P_RTT);
        const lastRoam = stats.peer(p.slot, P_LAST_ROAM);
        const state: StatusPeer['state'] =
          lastRx > 0 && now - lastRx < PEER_UP_MS ? 'up' : lastRx === 0 && now - p.addedAt < 30_000 ? 'connecting' : 'down';
        return {
          name,
          overlayIp: p.record.overlayIp,
          publicKey: p.record.publicKey,
          endpoint: p.roamed ?? p.record.endpoints[0] ?? '',
          path: lastRx > 0 ? 'direct' : 'none',
          state,
          lastHandshake: lastRx > 0 ? new Date(lastRx).toISOString() : null,
          rxBytes: stats.peer(p.slot, P_RX_BYTES),
          txBytes: stats.peer(p.slot, P_TX_BYTES),
          rxPackets: stats.peer(p.slot, P_RX_PKTS),
          txPackets: stats.peer(p.slot, P_TX_PKTS),
          rttMs: Number.isNaN(rtt) ? null : Math.round(rtt * 1000) / 1000,
          lastEndpointChange: lastRoam > 0 ? new Date(lastRoam).toISOString() : null,
        };
      });
    const reg = this.registry?.stats();
    return {
      version: 1,
      self: {
        name: this.cfg.name,
        network: this.network.name,
        overlayIp: this.overlayIp,
        publicKey: Buffer.from(this.keys.publicKey).toString('base64'),
        listenPort: this.udp?.port ?? 0,
        endpoints: [...this.endpoints],
        interface: this.cfg.interface,
        mtu: this.mtu,
        startedAt: this.startedAt.toISOString(),
        crypto: this.engine?.cryptoName ?? '',
        offload: this.tun?.offload ?? false,
      },
      etcd: { connected: this.registry?.connected() ?? false, invalidRecords: reg?.invalidRecords ?? 0 },
      peers,
      dataplane: {
        rxPackets: stats.totals[T_RX_PKTS]!,
        rxBytes: stats.totals[T_RX_BYTES]!,
        txPackets: stats.totals[T_TX_PKTS]!,
        txBytes: stats.totals[T_TX_BYTES]!,
        drops: stats.dropCounts(),
      },
    };
  }

  private readState(): SavedState | null {
    try {
      const raw = JSON.parse(fs.readFileSync(path.join(this.cfg.stateDir, STATE_FILE), 'utf8')) as SavedState;
      const spec = parseNetworkSpec(JSON.stringify(raw.network), { name: this.cfg.network });
      if (raw.version !== 1 || !spec.ok || parseIpv4(raw.overlayIp) === null) return null;
      return { version: 1, network: spec.value, overlayIp: raw.overlayIp };
    } catch {
      return null;
    }
  }

  private writeState(): void {
    const file = path.join(this.cfg.stateDir, STATE_FILE);
    const body: SavedState = { version: 1, network: this.network, overlayIp: this.overlayIp };
    fs.writeFileSync(`${file}.tmp`, JSON.stringify(body, null, 2) + '\n', { mode: 0o600 });
    fs.renameSync(`${file}.tmp`, file);
  }

  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    this.log.info('stopping');
    const step = async (what: string, fn: () => Promise<unknown> | unknown) => {
      try {
        await fn();
      } catch (e) {
        this.log.warn({ err: (e as Error).message }, `stop: ${what} failed`);
      }
    };
    await step('status', () => this.status?.stop());
    await step('liveness', () => withTimeout(this.registry?.stopAlive(), 2_000));
    await step('registry', () => withTimeout(this.registry?.close(), 2_000));
    await step('data plane', () => this.engine?.stop());
    await step('tun', () => this.tun?.close());
    await step('udp', () => this.udp?.close());
    await step('etcd', () => this.etcd?.close());
    this.log.info('stopped');
  }
}

function withTimeout<T>(p: Promise<T> | undefined, ms: number): Promise<T | undefined> {
  if (!p) return Promise.resolve(undefined);
  return Promise.race([p, new Promise<undefined>((r) => setTimeout(() => r(undefined), ms).unref())]);
}

/** Overlay MTU that fits a given underlay MTU. */
export function overlayMtuFor(underlayMtu: number): number {
  return underlayMtu - UNDERLAY_OVERHEAD - OVERHEAD;
}

export { formatIpv4 };
