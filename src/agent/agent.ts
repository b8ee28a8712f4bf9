/**
 * One agent process: wiring and lifecycle. Start order (nothing on the host is touched before
 * the config is valid and the key, network and overlay address are known):
 *
 *   1. identity    X25519 key pair from the state dir (created once, 0600)
 *   2. network     spec + overlay address lease from etcd (or the last known ones from the
 *                  state dir when etcd is unreachable at start)
 *   3. sockets     UDP socket bound, TUN opened, link/address/MTU applied declaratively
 *   4. data plane  the worker thread starts on those descriptors
 *   5. registry    publish our record, hold liveness, watch peers -> derive keys -> workers
 *   6. status      local API on the unix socket; Prometheus metrics on TCP when metricsListen is set
 *
 * Stop (SIGTERM/SIGINT) runs it backwards: a bye to every peer over its tunnel (they drop us at
 * once; a restart brings us back, see src/control/roster.ts), liveness released (the host record
 * stays), workers stopped, TUN closed (the kernel removes the device
 * with its addresses and routes), socket closed.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Etcd3 } from 'etcd3';
import { parseListenAddress, type AgentConfig } from '../config/config';
import { CladnetError, isCladnetError } from '../errors';
import type { Logger } from '../log';
import type { KeyPair } from '../crypto/keys';
import { MSG_INITIATION, Noise } from '../crypto/noise';
import { loadSodium } from '../crypto/sodium';
import { HandshakeManager, timersFromEnv } from './handshakes';
import { DeadlineTimer } from './deadline';
import { FileTimestamps } from './hs-timestamps';
import { describeEndpoint, PathManager, PUNCH_PAYLOAD, PUNCH_TTL, sameEndpoint, type Endpoint } from './paths';
import { ownCandidates6, recordCandidates, type Prefix6 } from './candidates';
import { ipv6InPrefix, ipv6Words, isHandle, words6 } from '../util/ipv6';
import { ReflexiveTracker } from './reflexive';
import { agentDiagnosticsDeps, Diagnostics, diagnosticsRoutes } from './diagnostics';
import { intervalTimers, LocalChangeMonitor, type LocalChange } from './changes';
import { StunClient } from '../control/stun-client';
import { openRouteMonitor, type RouteMonitor } from '../os/netlink';
import { createEtcd, createMemberClient, etcdOptionsFrom, resetEtcdConnections } from '../control/etcd';
import { EtcdLink } from '../control/etcd-link';
import { WatchHealth } from '../control/watch-health';
import { mayRelay } from '../control/cert';
import { getNetwork } from '../control/networks';
import { LATE, settleWithin } from '../util/settle';
import { formatPrefix6, hostIp6Text, overlay6Of, overlayPrefix6, PREFIX6_LEN } from '../control/overlay6';
import type { HostRecord, NetworkSpec } from '../control/records';
import { parseNetworkSpec } from '../control/records';
import { Registry, type PeerChange } from '../control/registry';
import { DataplaneEngine } from '../dataplane/engine';
import type { WorkerPeer } from '../dataplane/peer';
import { DIRECT, PEER_UP_MS, systemClock } from '../dataplane/peer';
import { MAX_PEERS, P_LAST_RX, P_LAST_TX, P_RTT, T_RX_PKTS, T_TX_PKTS } from '../dataplane/stats';
import { openTun, type TunDevice } from '../os/tun/tun';
import { sendDatagram, sendDatagramTtl, type UdpSocket } from '../os/udp/udp';
import { openUdpGroup } from '../os/udp/reuseport';
import { RouteManager } from '../os/routes/routes';
import { GatewayManager } from '../os/routes/gateway';
import { PinManager, type Pin } from '../os/routes/pins';
import { allowedByGateway, covers, planSubnets, uncovered, type SubnetPlan } from './subnets';
import { execRunner } from '../os/runner';
import { systemAddresses, type AddressSource } from '../os/netmon';
import { StatusServer } from '../status/server';
import type { MetricsServer } from '../status/metrics-server';
import type { StatusDocument } from '../status/types';
import { contains, formatPrefix, maskOf, parseEndpoint, parseIpv4, parseOverlayCidr, parsePrefix, type Prefix } from '../util/ipv4';
import { PeerTable } from './peer-table';
import { buildStatus, processUsage } from './status';
import { writeFileAtomicSync } from '../util/atomic-file';
import { loadOrCreateKeyPair } from './keystore';
import { enrolIfNeeded } from './enrol';
import type { ServiceSummary } from './service';
import { chooseNetworkSpec, loadMembership, type Membership } from './membership';
import { VIEW_OFFER_EVERY_MS, ViewGate, viewFromAgent } from './view';
import { serializeViewRecord, type ViewRecord } from '../control/views';
import { AgentPolicy } from './policy';

const STATE_FILE = 'state.json';
/** Newest handshake timestamp per peer key (replay protection that outlives a restart). */
const HS_TIMESTAMPS_FILE = 'hs-timestamps.json';

interface SavedState {
  version: 1;
  network: NetworkSpec;
  overlayIp: string;
}

/**
 * How long a host that has run before waits at start for etcd's network spec, then for its peers,
 * before it goes on with its saved state (etcd answers in milliseconds when it is well; a hung one
 * can take a call's whole deadline, and the tunnels must not wait for that).
 */
const NETWORK_WAIT_MS = 250;
const PEERS_WAIT_MS = 1_000;

/** How long a stop waits for the data plane to send its byes before it stops the workers. */
const BYE_FLUSH_MS = 50;
const BYE_COPIES = 2;
/** How often configured STUN servers and cloud metadata are asked again. */
const DISCOVERY_EVERY_MS = 60_000;
/** package.json's version (the same path from src/agent and dist/agent), for the status and cladnet_info. */
// eslint-disable-next-line @typescript-eslint/no-require-imports
const PACKAGE_VERSION = (require('../../package.json') as { version: string }).version;
/**
 * A gateway we keep sending to without hearing anything back for this long counts as down for its
 * failover group (the data plane pings a busy peer that went quiet every 300 ms, and we probe a
 * silent gateway, so a live one answers well within it). With the check every SUBNET_CHECK_MS,
 * a route moves to the standby gateway within about 1.3 s of the last packet from the failed one.
 */
const GATEWAY_SILENT_MS = 1_000;
const GATEWAY_PROBE_MS = 400;
const SUBNET_CHECK_MS = 100;

export class Agent {
  private etcd?: Etcd3;
  /** With several etcd endpoints: the member the watch and the keepalive use (watch-health.ts). */
  private etcdMember?: WatchHealth;
  /** Whether etcd answers, and the one retry schedule every etcd loop here follows. */
  private etcdLink?: EtcdLink;
  private registry?: Registry;
  private engine?: DataplaneEngine;
  /** The network policy (security groups): verified, compiled, handed to the data plane. */
  private policy?: AgentPolicy;
  private tun?: TunDevice;
  private udp?: UdpSocket;
  /** Every worker's socket on the listen port (udp is the first). */
  private udpGroup: UdpSocket[] = [];
  private status?: StatusServer;
  private metrics?: MetricsServer;
  private keys!: KeyPair;
  private member!: Membership;
  private hs?: HandshakeManager;
  private hsTimestamps?: FileTimestamps;
  /** Handshake and path timers run when one of their peers is due, not on a fixed tick. */
  private readonly hsTimer = new DeadlineTimer(() => this.hs?.tick());
  private readonly pathTimer = new DeadlineTimer(() => this.pathTick());
  private discoveryTimer?: NodeJS.Timeout;
  private viewTimer?: NodeJS.Timeout;
  private paths!: PathManager;
  private reflexive!: ReflexiveTracker;
  private stun?: StunClient;
  /** `cladnet ping` and `netcheck` (src/agent/diagnostics.ts). */
  private diag?: Diagnostics;
  private changes?: LocalChangeMonitor;
  private routeEvents?: RouteMonitor;
  /** Called once when the route monitor's socket turns readable (the data-plane worker watches it). */
  private onRouteReadable: (() => void) | null = null;
  private localPrefixes: Prefix[] = [];
  /** Of those, the ones a peer's candidate is a private path on (not another tunnel's: LocalAddress.tunnel). */
  private privatePrefixes: Prefix[] = [];
  /** Our underlay addresses ("a.b.c.d") as of the last updateLocal(). */
  private ownAddresses: string[] = [];
  /** Our underlay address set when last read ("ip/len,..."), null before the first read. */
  private addrKey: string | null = null;
  private metadataIp: string | null = null;
  private lastLocalChange: { at: string; reason: string } | null = null;
  private publishing = false;
  private publishAgain = false;
  private registered = false;
  private pushScheduled = false;
  private network!: NetworkSpec;
  private overlayIp = '';
  /** The network's IPv6 overlay prefix and our address in it (src/control/overlay6.ts). */
  private prefix6: Uint8Array = new Uint8Array(6);
  private overlayIp6 = '';
  /** The TUN takes IPv6 (false: the kernel has no IPv6; the overlay is IPv4 only). */
  private ipv6 = false;
  private mtu = 0;
  private endpoints: string[] = [];
  /** Our IPv6 candidates ("[2001:db8::1]:port"), published as the record's endpoints6. */
  private endpoints6: string[] = [];
  /** Our IPv6 networks (a peer's IPv6 candidate on one of them is a private path). */
  private localPrefixes6: Prefix6[] = [];
  /** Per peer, the unusable IPv6 candidates we last warned about (one warning per change). */
  private readonly skipped6 = new Map<string, string>();
  /** What peers punch toward in our last published record (the path choice waits for them to see a change). */
  private publishedEndpoints = '';
  /** Set in start() once our key is known. */
  private peers!: PeerTable;
  private readonly startedAt = new Date();
  /** This run's id, published in the host record (operators and peers see a restart by it). */
  private readonly session = randomBytes(8).toString('hex');
  private stopping?: Promise<void>;
  private readonly log: Logger;
  /** Which peer serves which advertised prefix (./subnets.ts), and each gateway's active prefixes. */
  private subnets: SubnetPlan = { routes: [], refused: [] };
  private allowed = new Map<string, Prefix[]>();
  private subnetTimer?: NodeJS.Timeout;
  /** Refusals already warned about ("gateway prefix reason"). */
  private refusedSeen = new Set<string>();
  private refusedCount = 0;
  /** Set once the first peer set is loaded (start(), step 5). */
  private up = false;
  /** etcd did not answer for the network spec within NETWORK_WAIT_MS at start. */
  private etcdLate = false;
  /** When each gateway of a failover group was last probed (at most every GATEWAY_PROBE_MS). */
  private readonly probedAt = new Map<string, number>();
  private routesApplied = '';
  private readonly gateway = new GatewayManager(execRunner);
  /** Host routes keeping peer endpoints (and etcd) on the underlay when a subnet route covers them. */
  private readonly pinManager = new PinManager(execRunner);
  private pins: Pin[] = [];
  private pinChain: Promise<void> = Promise.resolve();

  constructor(
    private readonly cfg: AgentConfig,
    log: Logger,
    private readonly addresses: AddressSource = systemAddresses([cfg.interface]),
    /** The data-plane worker's heartbeat moves at least this often (the systemd watchdog's need). */
    private readonly heartbeatMs?: number,
  ) {
    this.log = log.child({ component: 'agent', host: cfg.name });
    this.paths = new PathManager({
      now: Date.now,
      isLocal: (ip) => this.isLocal(ip),
      behindNat: () => ['eim', 'varies'].includes(this.reflexive.view().nat),
      wake: (at) => this.pathTimer.arm(at),
    });
    this.paths.unpublished();
    // (our addresses as of the last updateLocal(): every pong asks, and a fresh list costs a netlink dump)
    this.reflexive = new ReflexiveTracker(Date.now, () => this.ownAddresses);
  }

  async start(): Promise<void> {
    const cfg = this.cfg;
    // 1. identity
    const { keys, created } = await loadOrCreateKeyPair(cfg.stateDir);
    this.keys = keys;
    const publicKey = Buffer.from(keys.publicKey).toString('base64');
    this.peers = new PeerTable({ maxPeers: MAX_PEERS, resetSlot: (s) => this.engine!.stats.resetPeer(s), ownKey: publicKey });
    this.log.info({ publicKey, created }, created ? 'created host key' : 'loaded host key');
    // First boot with a join token (src/agent/enrol.ts): certify our own key, store the certificate.
    await enrolIfNeeded(cfg, () => this.etcdClient(), publicKey, this.log);
    // Our certificate (src/agent/membership.ts): this network's, this name's, this key's, valid now.
    this.member = await loadMembership(cfg, publicKey, this.log);
    const bad = uncovered(cfg.advertiseRoutes, this.member.cert.routes ?? []);
    if (bad !== null) {
      throw new CladnetError(
        'EROUTE',
        `advertiseRoutes: ${bad} is not covered by this host's certificate (it carries ${this.member.cert.routes?.join(', ') || 'no routes'}; ` +
          `issue it with cladnet host issue ${cfg.name} --routes ...)`,
        { field: 'advertiseRoutes' },
      );
    }
    if (cfg.relay && this.member.cert.relay !== true) {
      this.log.warn('relay is on, but the certificate does not allow this host to relay: peers will not use it (issue it with host issue --relay)');
    }

    // 2. network; the address is the one our certificate binds (`cladnet host issue` leased it)
    const etcd = this.etcdClient();
    if (cfg.etcd.length > 1) {
      this.etcdMember = new WatchHealth({ endpoints: cfg.etcd, connect: (e) => createMemberClient(etcdOptionsFrom(cfg), e), log: this.log });
    }
    // A host that has run before does not wait for etcd (down, hung or cut off: its calls can take
    // their whole deadline, and more): after NETWORK_WAIT_MS it starts on the saved spec, and
    // etcd's, if it comes later, is looked at then (lateNetwork).
    const saved = this.readState();
    const fromEtcd = getNetwork(etcd, cfg.network);
    let spec: NetworkSpec | typeof LATE;
    try {
      spec = saved ? await settleWithin(fromEtcd, NETWORK_WAIT_MS) : await fromEtcd;
    } catch (e) {
      if (!(isCladnetError(e) && e.transient && saved)) throw e;
      this.log.warn({ err: e.message }, 'etcd unreachable at start: using the last known network');
      spec = saved.network;
    }
    if (spec === LATE) {
      this.log.warn({ waitedMs: NETWORK_WAIT_MS }, 'etcd does not answer at start: using the last known network');
      this.etcdLate = true;
      fromEtcd.then(
        (late) => this.lateNetwork(late, saved!.network),
        () => undefined, // (the registry's retries report the outage)
      );
    }
    this.network = chooseNetworkSpec(spec === LATE ? saved!.network : spec, saved?.network ?? null, this.member, this.log);
    this.overlayIp = this.member.cert.overlayIp;
    this.prefix6 = overlayPrefix6(this.network);
    this.overlayIp6 = hostIp6Text(this.prefix6, this.overlayIp) ?? '';
    this.writeState();
    this.mtu = this.network.mtu;

    // 3. sockets, device, link
    // one UDP socket and one TUN queue per data-plane worker (docs/design.md, Many cores); the
    // control thread sends on the first socket
    this.udpGroup = openUdpGroup({ port: cfg.listenPort || this.network.port }, cfg.workers);
    this.udp = this.udpGroup[0]!;
    this.tun = openTun(cfg.interface, { offload: cfg.offload, queues: cfg.workers });
    this.ipv6 = this.prepareIpv6(cfg.interface);
    await new RouteManager(execRunner).set({
      ifname: cfg.interface,
      mtu: this.mtu,
      addresses: this.linkAddresses(),
      routes: [],
    });
    if (cfg.advertiseRoutes.length > 0) {
      await this.gateway.set({ ifname: cfg.interface, forward: true, snat: cfg.snatRoutes ? cfg.advertiseRoutes : [] });
      this.log.info({ routes: cfg.advertiseRoutes, snat: cfg.snatRoutes }, 'serving routes for the mesh');
    }

    // 4. data plane
    this.engine = await DataplaneEngine.start({
      tunFd: this.tun.fds[0]!,
      udpFd: this.udp.fd,
      ...(cfg.workers > 1 ? { tunFds: this.tun.fds, udpFds: this.udpGroup.map((u) => u.fd) } : {}),
      mtu: this.mtu,
      vnet: this.tun.offload,
      udpOffload: cfg.udpOffload,
      crypto: cfg.crypto,
      batch: cfg.batch,
      relay: cfg.relay,
      overlay6: overlay6Of(this.prefix6),
      heartbeatMs: this.heartbeatMs,
      publicKey: new Uint8Array(keys.publicKey),
      onRoam: (slot, ip, port, via) => this.onRoam(slot, ip, port, via),
      onHandshake: (data, ip, port, via, proven) => {
        if (via === DIRECT) this.hs?.receive(data, ip, port, undefined, { proven });
        else {
          // ip: the overlay address the relay names as the sender (a cookie reply goes back there)
          const relay = this.nameOfSlot(via);
          if (relay) this.hs?.receive(data, 0, 0, relay, { origin: this.nameOfOverlay(ip) });
        }
      },
      onStun: (data, ip, port) => this.stun?.receive(Buffer.from(data), ip, port),
      onPong: (p) => this.onPong(p),
      onConfirmed: (slot, keyId) => {
        const name = this.nameOfSlot(slot);
        if (name) this.hs?.confirmed(name, keyId);
      },
      onReadable: () => {
        const fn = this.onRouteReadable;
        this.onRouteReadable = null;
        fn?.();
      },
      onWant: (ip) => {
        // A packet for a peer with no session to send it on: handshake now, not at its retry.
        const name = this.nameOfOverlay(ip);
        if (name) this.hs?.demand(name);
      },
      onBye: (slot) => {
        // Authenticated by the peer's session: an etcd writer cannot send it (roster.ts).
        const name = this.nameOfSlot(slot);
        if (name && this.registry?.bye(name)) this.log.info({ peer: name }, 'peer said bye');
      },
      onFatal: (message) => {
        this.log.fatal({ message }, 'data plane failed; stopping');
        void this.stop().then(() => process.exit(1));
      },
    });

    // 5. handshakes, registry
    const udpFd = this.udp.fd;
    this.hs = new HandshakeManager({
      noise: new Noise(await loadSodium(), keys.privateKey, keys.publicKey),
      workers: cfg.workers,
      send: (data, ip, port, via) => {
        if (!via) {
          sendDatagram(udpFd, data, ip, port);
          if (data[0] === MSG_INITIATION) this.engine?.expectHandshake(ip);
          return;
        }
        const relay = this.peers.get(via.relay);
        const target = this.peers.get(via.peer);
        if (relay && target) this.engine?.forward(relay.slot, target.overlayIp, data);
      },
      targets: (name, hasSession) => this.paths.handshakeTargets(name, hasSession),
      onEndpoint: (name, from) => {
        this.paths.onHandshake(name, from);
        this.syncPaths();
      },
      onChange: (now) => {
        if (now) this.pushPeers();
        else this.schedulePush();
        // A peer with a session now is probed (or one without is not): the path choice looks again.
        this.pathTimer.arm(Date.now());
      },
      lastRx: (name) => {
        const p = this.peers.get(name);
        return p && this.engine ? this.engine.stats.peer(p.slot, P_LAST_RX) : 0;
      },
      wake: (at) => this.hsTimer.arm(at),
      log: this.log,
      timers: timersFromEnv(process.env),
      timestamps: (this.hsTimestamps = new FileTimestamps(path.join(cfg.stateDir, HS_TIMESTAMPS_FILE), this.log)),
      onUnknownInitiator: (key) => void this.registry?.returned(Buffer.from(key).toString('base64')),
    });
    this.stun = new StunClient({
      send: (data, ip, port) => sendDatagram(udpFd, data, ip, port),
      now: () => performance.now(),
      setTimer: (fn, ms) => {
        const t = setTimeout(fn, ms);
        t.unref();
        return { cancel: () => clearTimeout(t) };
      },
      random: (n) => randomBytes(n),
    });
    this.policy = new AgentPolicy({
      network: this.network.name,
      trust: this.member.anchor,
      selfCert: this.member.cert,
      peerCerts: () => [...this.peers].flatMap(([, p]) => (p.record.cert ? [p.record.cert] : [])),
      apply: (policy, counters) => this.engine?.setPolicy(policy, counters),
      file: path.join(cfg.stateDir, 'policy.json'),
      log: this.log,
    });
    this.policy.load();
    this.registry = new Registry({
      client: etcd,
      network: this.network,
      self: cfg.name,
      log: this.log,
      cacheFile: path.join(cfg.stateDir, 'peers.json'),
      trust: this.member.anchor,
      selfCert: this.member.cert,
      heardAt: (name) => {
        const p = this.peers.get(name);
        return p && this.engine ? this.engine.stats.peer(p.slot, P_LAST_RX) : null;
      },
      link: this.etcdLink,
      health: this.etcdMember,
      onPolicy: (value, modRevision, deleted) => this.policy?.onValue(value, modRevision, deleted),
    });
    this.updateLocal();
    void this.register();
    // (etcd that missed the network's deadline gets none here: the cached peers come at once)
    await this.registry.watchChanges((c) => this.onPeerChange(c), { cacheAfterMs: this.etcdLate ? 0 : PEERS_WAIT_MS });
    this.up = true;
    this.startChangeMonitor();
    void this.discover();
    this.discoveryTimer = setInterval(() => void this.discover(), DISCOVERY_EVERY_MS);
    this.discoveryTimer.unref();
    // Our view of the peers for `cladnet dashboard` (agent/view.ts): offered every second, written on change.
    const gate = new ViewGate({ now: () => performance.now(), write: (v) => this.registry?.publishView(serializeViewRecord(v)) });
    this.viewTimer = setInterval(() => {
      if (this.engine && !this.stopping) gate.offer(this.view());
    }, VIEW_OFFER_EVERY_MS);
    this.viewTimer.unref();

    // 6. status (and the diagnostics behind ping and netcheck)
    const stun = this.stun;
    this.diag = new Diagnostics(
      agentDiagnosticsDeps({
        peers: this.peers,
        mono: systemClock.mono,
        hasSession: (name) => this.hs?.usable(name) != null,
        handshake: (name) => this.hs?.demand(name),
        send: (slot, t0) => this.engine?.diag(slot, t0),
        isLocal: (ip) => this.isLocal(ip),
        ownAddresses: () => this.ownAddresses,
        stunServers: cfg.stun,
        stunQuery: (server, opts) => stun.query(server, opts),
        status: () => this.statusDocument(),
      }),
    );
    this.status = new StatusServer(cfg.socket, () => this.statusDocument(), diagnosticsRoutes(() => this.diag));
    await this.status.start();
    const metricsAt = cfg.metricsListen === undefined ? null : parseListenAddress(cfg.metricsListen);
    if (metricsAt) {
      const { MetricsServer } = await import('../status/metrics-server'); // (loaded only when asked for)
      this.metrics = new MetricsServer(metricsAt.host, metricsAt.port, () => this.statusDocument());
      await this.metrics.start();
    }
    this.log.info(
      {
        overlayIp: this.overlayIp,
        overlayIp6: this.ipv6 ? this.overlayIp6 : undefined,
        interface: cfg.interface,
        port: this.udp.port,
        mtu: this.mtu,
        endpoints: [...this.endpoints, ...this.endpoints6],
        crypto: this.engine.cryptoName,
        offload: this.tun.offload,
        workers: cfg.workers,
        metrics: cfg.metricsListen,
      },
      'agent up',
    );
  }

  /**
   * etcd's network spec, come after the agent started on the saved one. The data plane runs on the
   * saved spec's MTU, port and prefixes; a spec that changes any of them (signed by the network key,
   * as chooseNetworkSpec checks) is saved, and the agent stops with an error so that its service
   * restarts on it. Anything else only updates the saved copy.
   */
  private lateNetwork(spec: NetworkSpec, saved: NetworkSpec): void {
    if (this.stopping || !this.network) return;
    let chosen: NetworkSpec;
    try {
      chosen = chooseNetworkSpec(spec, saved, this.member, this.log);
    } catch (e) {
      this.log.error({ err: (e as Error).message }, 'the network spec in etcd is refused; keeping the saved one');
      return;
    }
    const was = this.network;
    const samePlane =
      chosen.cidr === was.cidr &&
      chosen.mtu === was.mtu &&
      chosen.port === was.port &&
      Buffer.from(overlayPrefix6(chosen)).equals(Buffer.from(overlayPrefix6(was)));
    if (samePlane) {
      if (JSON.stringify(chosen) !== JSON.stringify(was)) {
        this.network = chosen;
        this.writeState();
      }
      return;
    }
    this.log.error(
      { from: { cidr: was.cidr, mtu: was.mtu, port: was.port }, to: { cidr: chosen.cidr, mtu: chosen.mtu, port: chosen.port } },
      'the network spec in etcd differs from the saved one this agent started on; saved it, stopping so that the service restarts on it',
    );
    this.network = chosen;
    this.writeState();
    void this.stop().then(() => process.exit(1));
  }

  /** The etcd client (made on first use: enrolment may need it before the certificate is loaded). */
  private etcdClient(): Etcd3 {
    if (!this.etcd) {
      this.etcdLink = new EtcdLink({ log: this.log });
      this.etcd = createEtcd({ ...etcdOptionsFrom(this.cfg), link: this.etcdLink });
    }
    return this.etcd;
  }

  /** The data plane, for the service watchdog (heartbeat) and its test hook; undefined before step 4. */
  get dataplane(): DataplaneEngine | undefined {
    return this.engine;
  }

  /** The systemd STATUS= line's numbers; cheap (no status document), as statusDocument() counts them. */
  serviceSummary(): ServiceSummary {
    const now = Date.now();
    let up = 0;
    const table = this.peers as PeerTable | undefined; // (set in start())
    if (!table) return { peers: 0, up: 0, etcd: false };
    for (const p of table.values()) {
      const lastRx = this.engine ? this.engine.stats.peer(p.slot, P_LAST_RX) : 0;
      if (lastRx > 0 && now - lastRx < PEER_UP_MS) up++;
    }
    return { peers: table.size, up, etcd: this.registry?.connected() ?? false };
  }

  private linkStatus(): { link: 'unknown' | 'up' | 'down'; downSince: string | null; outages: number } | undefined {
    if (!this.etcdLink) return undefined;
    const st = this.etcdLink.stats();
    return { link: st.state, downSince: st.downSince === null ? null : new Date(st.downSince).toISOString(), outages: st.outages };
  }

  /** Publishes our record and holds liveness, retrying on the etcd link's schedule while etcd is unreachable. */
  private async register(): Promise<void> {
    let logged = false;
    while (!this.stopping && this.registry) {
      try {
        const rec = this.hostRecord();
        const res = await this.registry.publish(rec);
        if (res.written) this.notePublished(rec);
        if (!res.written) {
          this.log.error(
            { epoch: res.current.epoch, session: res.current.session },
            'another agent published under this host name after us; not overwriting it (two hosts with one name?)',
          );
          return;
        }
        await this.registry.startAlive();
        this.registered = true;
        if (logged) this.log.info('registered with etcd');
        if (this.publishAgain) void this.republish();
        return;
      } catch (e) {
        if (this.stopping) return;
        // Once per outage: the etcd link logs the outage itself.
        if (!logged) this.log.warn({ err: (e as Error).message }, 'registration failed; retrying when etcd answers');
        logged = true;
        await this.etcdLink!.wait();
      }
    }
  }

  /** Our record as of the last updateLocal() (our networks, candidates) and what observers told us. */
  private hostRecord(): HostRecord {
    const view = this.reflexive.view();
    return {
      version: 1,
      name: this.cfg.name,
      network: this.network.name,
      overlayIp: this.overlayIp,
      publicKey: Buffer.from(this.keys.publicKey).toString('base64'),
      endpoints: this.endpoints,
      endpoints6: this.endpoints6.length > 0 ? this.endpoints6 : undefined,
      hostCidrs: [...new Set(this.localPrefixes.map(formatPrefix))],
      listenPort: this.udp!.port,
      epoch: 0,
      updated: new Date().toISOString(),
      session: this.session,
      cert: this.member.cert,
      relay: this.cfg.relay || undefined,
      nat: view.nat,
      reflexive: view.reflexive ?? undefined,
      routes: this.cfg.advertiseRoutes.length > 0 ? [...this.cfg.advertiseRoutes] : undefined,
    };
  }

  /**
   * Our candidates, in order: configured (--advertise) or interface addresses, then the reflexive
   * address when it holds for every peer (NAT 'eim'), then the cloud metadata's public address.
   */
  private candidates(): string[] {
    const port = this.udp!.port;
    const out: string[] =
      this.cfg.advertise.length > 0
        ? this.cfg.advertise.map((a) => (a.includes(':') ? a : `${a}:${port}`))
        : this.addresses
            .list()
            .filter((a) => !a.tunnel && a.address !== this.overlayIp && a.address !== this.overlayIp6 && !this.insideOwnRoutes(a.address))
            .map((a) => `${a.address}:${port}`);
    const view = this.reflexive.view();
    if (view.nat === 'eim' && view.reflexive) out.push(view.reflexive);
    if (this.metadataIp) out.push(`${this.metadataIp}:${port}`);
    return [...new Set(out)].slice(0, 16);
  }

  /** Re-reads our addresses: local networks (for private paths) and candidates. True if the candidates changed. */
  private updateLocal(): boolean {
    this.localPrefixes = [];
    this.privatePrefixes = [];
    const list = this.addresses.list();
    // Our address set changed (whoever noticed first: the change monitor, or a pong that saw us
    // at a new address): connections to etcd made from an address we may no longer have are
    // dead, and a publish on them would wait out its deadline. Dial again before publishing.
    const addrKey = list.map((a) => `${a.address}/${a.prefixLen}`).sort().join(',');
    if (this.addrKey !== null && addrKey !== this.addrKey && this.etcd) {
      if (resetEtcdConnections(this.etcd)) this.log.debug('etcd connections reset');
      // A publish in flight went out on one of those connections: do not wait out its deadline.
      if (this.registry?.abortPublish()) this.log.debug('publish in flight abandoned; publishing again');
      // A new address may reach etcd where the old one did not: retry now, not at the next round.
      this.etcdLink?.kick();
    }
    this.addrKey = addrKey;
    this.ownAddresses = list.map((a) => a.address);
    for (const a of list) {
      const ip = parseIpv4(a.address);
      if (ip === null || a.address === this.overlayIp) continue;
      const p = { base: (ip & maskOf(a.prefixLen)) >>> 0, len: a.prefixLen };
      this.localPrefixes.push(p);
      if (!a.tunnel) this.privatePrefixes.push(p);
    }
    const list6 = this.addresses.list6?.() ?? [];
    this.localPrefixes6 = [];
    for (const a of list6) {
      const w = ipv6Words(a.address);
      if (w !== null && !a.tunnel) this.localPrefixes6.push({ base: w, len: a.prefixLen });
    }
    const next = this.candidates();
    // IPv6: every global or unique-local interface address (--advertise lists IPv4 only: then none)
    const next6 = this.cfg.advertise.length > 0 ? [] : ownCandidates6(list6.filter((a) => !a.tunnel), this.udp!.port, (a) => a === this.overlayIp).slice(0, 16);
    const changed = next.join(',') !== this.endpoints.join(',') || next6.join(',') !== this.endpoints6.join(',');
    this.endpoints = next;
    this.endpoints6 = next6;
    return changed;
  }

  /**
   * An address of ours inside a prefix we route for the mesh is one peers reach through the tunnel
   * to us: never a candidate for the tunnel itself (the tunnel would carry itself).
   */
  private insideOwnRoutes(address: string): boolean {
    const ip = parseIpv4(address);
    return ip !== null && this.cfg.advertiseRoutes.some((r) => covers(parsePrefix(r)!, { base: ip, len: 32 }));
  }

  /** `ip` (an IPv4 address or an IPv6 handle) is on one of our own networks. */
  private isLocal(ip: number): boolean {
    const w = words6(ip);
    if (w) return this.localPrefixes6.some((p) => ipv6InPrefix(w, p.base, p.len));
    return this.privatePrefixes.some((p) => contains(p, ip));
  }

  /** Our record is out: NATed peers punch toward what it says from now on (the path choice waits for that). */
  private notePublished(rec: HostRecord): void {
    const key = `${rec.endpoints.join(',')}|${(rec.endpoints6 ?? []).join(',')}|${rec.reflexive}|${rec.nat}`;
    if (key !== this.publishedEndpoints) this.paths.published();
    this.publishedEndpoints = key;
  }

  /** Publishes the record again (new candidates or NAT facts), coalescing bursts; retries while etcd is down. */
  private async republish(): Promise<void> {
    if (!this.registered || this.stopping) {
      this.publishAgain = true;
      return;
    }
    if (this.publishing) {
      this.publishAgain = true;
      return;
    }
    this.publishing = true;
    let logged = false;
    try {
      do {
        this.publishAgain = false;
        try {
          const rec = this.hostRecord();
          const res = await this.registry!.publish(rec);
          if (!res.written) return;
          this.notePublished(rec);
          this.log.info({ endpoints: this.endpoints, epoch: res.record.epoch }, 'republished host record');
          logged = false;
        } catch (e) {
          if (this.stopping) return;
          if (isCladnetError(e) && e.code === 'EABORTED') {
            this.publishAgain = true; // at once, on the fresh connections
            continue;
          }
          if (!logged) this.log.warn({ err: (e as Error).message }, 'republish failed; retrying when etcd answers');
          logged = true;
          this.publishAgain = true;
          await this.etcdLink!.wait();
        }
      } while (this.publishAgain && !this.stopping);
    } finally {
      this.publishing = false;
    }
  }

  /** Candidates or NAT facts may have changed: publish if they did. */
  private candidatesMaybeChanged(): void {
    if (this.updateLocal()) void this.republish();
    // What we learned may say we sit behind a NAT: the hole punches go out now (paths.ts).
    this.pathTick();
  }

  /** Asks the configured STUN servers and cloud metadata (if any) where we are. */
  private async discover(): Promise<void> {
    const jobs: Promise<unknown>[] = [];
    for (const s of this.cfg.stun) {
      const ep = parseEndpoint(s);
      if (!ep || !this.stun) continue;
      jobs.push(
        this.stun.query({ ip: ep.ip, port: ep.port }).then((m) => {
          // (held until well after the next query, so the view does not flicker in between)
          if (m) this.reflexive.observe(`stun:${s}`, ep.ip, m.ip, m.port, 2.5 * DISCOVERY_EVERY_MS);
          else this.log.debug({ server: s }, 'STUN server did not answer');
        }),
      );
    }
    const provider = this.cfg.metadata;
    if (provider !== 'off') {
      jobs.push(
        import('../control/metadata') // (loaded only when asked for)
          .then((m) => m.discoverPublicIp(provider, fetch))
          .then((a) => {
            this.metadataIp = a?.ip ?? null;
            if (a) this.log.debug({ provider: a.provider, ip: a.ip }, 'public address from instance metadata');
          }),
      );
    }
    if (jobs.length === 0) return;
    await Promise.allSettled(jobs);
    if (!this.stopping) this.candidatesMaybeChanged();
  }

  private startChangeMonitor(): void {
    try {
      this.routeEvents = openRouteMonitor();
    } catch (e) {
      this.log.warn({ err: (e as Error).message }, 'no netlink route events; relying on periodic address checks');
    }
    const events = this.routeEvents;
    this.changes = new LocalChangeMonitor({
      events: events ?? null,
      // The worker's poll set watches the netlink socket: no 100 ms poll on this thread.
      readable:
        events && this.engine
          ? {
              arm: (fn) => {
                this.onRouteReadable = fn;
                this.engine?.watch(events.fd);
              },
              disarm: () => {
                this.onRouteReadable = null;
                this.engine?.watch(-1);
              },
            }
          : undefined,
      addresses: this.addresses,
      clock: { now: Date.now, mono: () => performance.now() },
      timers: intervalTimers,
      onChange: (c) => this.onLocalChange(c),
    });
    this.changes.start();
  }

  /**
   * Our addresses changed, or we woke from a stop: tell every peer where we are now (pings at
   * once, new handshakes), probe all paths again, forget what observers told us, re-publish, and
   * re-apply our link state (idempotent). A route-only change just re-checks paths.
   */
  private onLocalChange(c: LocalChange): void {
    this.lastLocalChange = { at: new Date().toISOString(), reason: c.reason };
    this.log.info({ reason: c.reason, before: c.before, after: c.after, gapMs: c.gapMs }, 'local network changed');
    this.engine?.pingAll();
    this.paths.localChanged();
    // Any change of our network (a route too) may make etcd reachable again: retry it now.
    this.etcdLink?.kick();
    // The underlay may route differently now: pins follow (a no-op without subnet routes).
    void this.refreshPins();
    if (c.reason === 'route') return;
    this.reflexive.reset();
    this.hs?.rekeyAll();
    // After a stop the connections to etcd may be dead even at the same address: dial again (an
    // address change does that in updateLocal).
    if (c.reason === 'resume' && this.etcd) {
      resetEtcdConnections(this.etcd);
      this.etcdLink?.kick();
    }
    this.updateLocal();
    this.reconcileSubnets();
    void this.republish();
    void this.discover();
    void this.applyLink().catch((e: Error) => this.log.warn({ err: e.message }, 'could not re-apply link state'));
  }

  private async applyLink(): Promise<void> {
    const routes = this.subnets.routes.map((r) => r.prefix);
    // Pins first: a new subnet route must never capture a tunnel endpoint, not even for a moment.
    await this.refreshPins();
    await new RouteManager(execRunner).set({
      ifname: this.cfg.interface,
      mtu: this.mtu,
      addresses: this.linkAddresses(),
      routes,
    });
    this.routesApplied = routes.join(',');
    if (this.cfg.advertiseRoutes.length > 0) {
      await this.gateway.set({ ifname: this.cfg.interface, forward: true, snat: this.cfg.snatRoutes ? this.cfg.advertiseRoutes : [] });
    }
  }

  /**
   * Brings the endpoint pins (src/os/routes/pins.ts) up to date: every peer's direct endpoint and
   * every etcd address that an installed subnet route covers leaves by the route it would take
   * without ours. Serialized; costs nothing while no subnet route is installed and no pin is left.
   */
  private refreshPins(): Promise<void> {
    const next = this.pinChain.then(async () => {
      if (this.stopping) return;
      const covered = this.subnets.routes.map((r) => parsePrefix(r.prefix)!);
      if (covered.length === 0 && this.pins.length === 0) return;
      const endpoints: number[] = [];
      // IPv4 endpoints only: an IPv6 one (a handle) is never covered by the IPv4 subnet routes
      for (const p of this.peers.values()) if (p.endpoint.via === undefined && p.endpoint.ip !== 0 && !isHandle(p.endpoint.ip)) endpoints.push(p.endpoint.ip);
      for (const u of this.cfg.etcd) {
        const ip = parseIpv4(hostOf(u));
        if (ip !== null) endpoints.push(ip);
      }
      try {
        const r = await this.pinManager.set(endpoints, covered, this.cfg.interface);
        this.pins = r.pins;
        if (r.commands.length > 0) this.log.info({ pins: r.pins.map((p) => `${p.dst} via ${p.gateway ?? '-'} dev ${p.dev}`) }, 'endpoint pins updated');
      } catch (e) {
        this.log.warn({ err: (e as Error).message }, 'could not update endpoint pins');
      }
    });
    this.pinChain = next;
    return next;
  }

  /**
   * How a gateway looks to the data plane now: 'down' when we kept sending to it for
   * GATEWAY_SILENT_MS past its last packet (a gateway that stops answering under traffic is down
   * long before PEER_UP_MS), 'up' when we heard it within PEER_UP_MS on a session, else 'unknown'
   * (quiet, or no session yet: a handshake on demand follows the first packet routed to it).
   */
  private gatewayHealth(name: string, now: number): 'up' | 'unknown' | 'down' {
    const p = this.peers.get(name);
    if (!p || !this.engine) return 'unknown';
    const rx = this.engine.stats.peer(p.slot, P_LAST_RX);
    const tx = this.engine.stats.peer(p.slot, P_LAST_TX);
    if (tx > 0 && tx - rx >= GATEWAY_SILENT_MS) return 'down';
    return rx > 0 && now - rx < PEER_UP_MS && (this.hs?.sessionsOf(name).length ?? 0) > 0 ? 'up' : 'unknown';
  }

  /**
   * Recomputes which peer serves which prefix (./subnets.ts) and applies a change: the data plane's
   * allowed prefixes at once, the kernel routes (one per prefix, into the overlay) when the set of
   * prefixes changed. A failover only moves the allowed set: the kernel route stays as it is.
   */
  private reconcileSubnets(): void {
    if (!this.peers || this.stopping) return;
    const now = Date.now();
    const inputs = [];
    for (const [name, p] of this.peers) {
      const advertised = p.record.routes ?? [];
      if (advertised.length === 0) continue;
      inputs.push({ name, advertised, certified: p.record.cert?.routes ?? [], health: this.gatewayHealth(name, now) });
    }
    const plan = planSubnets(inputs, { overlay: parseOverlayCidr(this.network.cidr), own: this.cfg.advertiseRoutes, local: this.localPrefixes });
    for (const r of plan.refused) {
      const key = `${r.gateway} ${r.prefix} ${r.reason}`;
      if (this.refusedSeen.has(key)) continue;
      this.refusedSeen.add(key);
      this.refusedCount++;
      this.log.warn({ peer: r.gateway, prefix: r.prefix }, `advertised route refused: ${r.reason}`);
    }
    const before = new Map(this.subnets.routes.map((r) => [r.prefix, r.gateway]));
    this.subnets = plan;
    this.armGatewayCheck();
    let moved = false;
    for (const r of plan.routes) {
      const was = before.get(r.prefix);
      if (was === r.gateway) continue;
      moved = true;
      if (was !== undefined) this.log.info({ prefix: r.prefix, from: was, to: r.gateway }, 'route moved to another gateway');
      else this.log.info({ prefix: r.prefix, gateway: r.gateway }, 'route added');
    }
    if (moved || before.size !== plan.routes.length) {
      this.allowed = allowedByGateway(plan);
      this.pushPeers();
    }
    if (plan.routes.map((r) => r.prefix).join(',') !== this.routesApplied) {
      void this.applyLink().catch((e: Error) => this.log.warn({ err: e.message }, 'could not apply subnet routes'));
    }
  }

  /**
   * The failover check runs every SUBNET_CHECK_MS only while some route has a standby gateway:
   * without a failover group there is nothing to check, and an idle agent should not wake ten
   * times a second for nothing.
   */
  private armGatewayCheck(): void {
    const groups = this.subnets.routes.some((r) => r.standby.length > 0);
    if (groups && !this.subnetTimer && !this.stopping) {
      this.subnetTimer = setInterval(() => this.checkGateways(), SUBNET_CHECK_MS);
      this.subnetTimer.unref();
    } else if (!groups && this.subnetTimer) {
      clearInterval(this.subnetTimer);
      this.subnetTimer = undefined;
    }
  }

  /** The failover check: probes gateways that went quiet under traffic, then reconciles. */
  private checkGateways(): void {
    if (!this.engine || this.stopping) return;
    const now = Date.now();
    let groups = false;
    for (const r of this.subnets.routes) {
      if (r.standby.length === 0) continue;
      groups = true;
      for (const name of [r.gateway, ...r.standby]) {
        const p = this.peers.get(name);
        if (!p || p.endpoint.via !== undefined) continue;
        const rx = this.engine.stats.peer(p.slot, P_LAST_RX);
        const tx = this.engine.stats.peer(p.slot, P_LAST_TX);
        if (now - (this.probedAt.get(name) ?? 0) < GATEWAY_PROBE_MS) continue;
        if (tx - rx > GATEWAY_PROBE_MS || now - rx > GATEWAY_PROBE_MS * 10) {
          this.probedAt.set(name, now);
          this.engine.probe(p.slot, p.endpoint.ip, p.endpoint.port);
        }
      }
    }
    if (groups) this.reconcileSubnets();
  }

  /** Status: each installed route and who serves it, and how many advertised routes were refused. */
  private subnetStatus(): { routes: { prefix: string; gateway: string; standby: string[] }[]; refused: { gateway: string; prefix: string; reason: string }[]; refusedTotal: number } {
    return {
      routes: this.subnets.routes.map((r) => ({ prefix: r.prefix, gateway: r.gateway, standby: [...r.standby] })),
      refused: this.subnets.refused.map((r) => ({ ...r })),
      refusedTotal: this.refusedCount,
    };
  }

  /** Runs the path choice for every peer, or for `only` (peers just added or changed). */
  private pathTick(only?: readonly string[]): void {
    if (!this.engine || !this.hs) return;
    const actions = this.paths.tick((name) => this.hs?.usable(name) !== null, only);
    for (const p of actions.probes) {
      const e = this.peers.get(p.name);
      if (e) this.engine.probe(e.slot, p.ip, p.port);
    }
    for (const p of actions.punches) if (this.udp) sendDatagramTtl(this.udp.fd, PUNCH_PAYLOAD, p.ip, p.port, PUNCH_TTL);
    this.syncPaths(actions.moves.map((m) => m.name));
    this.pathTimer.arm(this.paths.nextDue());
  }

  /** Carries the path choice to the handshakes and the data plane (for `names`, default every peer). */
  private syncPaths(names?: readonly string[]): void {
    let changed = false;
    for (const name of names ?? this.peers.names()) {
      const p = this.peers.get(name);
      if (!p) continue;
      const cur = this.paths.current(name);
      if (cur === null || sameEndpoint(cur, p.endpoint)) continue;
      const st = this.paths.state(name);
      this.log.info({ peer: name, from: describeEndpoint(p.endpoint), to: describeEndpoint(cur), path: st.kind, scope: st.scope }, 'peer path changed');
      p.endpoint = cur;
      this.hs?.moveEndpoint(name, cur.ip, cur.port, cur.via);
      changed = true;
    }
    if (changed) {
      this.schedulePush();
      void this.refreshPins();
    }
  }

  private onPong(p: { slot: number; rttMs: number; ip: number; port: number; via: number; seenIp: number; seenPort: number; t0: number }): void {
    // The answer to a diagnostic ping is the diagnostics' alone: it must not steer the path choice.
    if (this.diag?.onPong(p)) return;
    const name = this.nameOfSlot(p.slot);
    if (!name) return;
    const relay = p.via === DIRECT ? undefined : this.nameOfSlot(p.via);
    if (p.via !== DIRECT && !relay) return;
    this.paths.onPong(name, relay ? { ip: 0, port: 0, via: relay } : { ip: p.ip, port: p.port }, p.rttMs);
    // A pong may be the evidence a move waits for: decide now, not at the next path tick.
    const current = this.peers.get(name)?.endpoint;
    if (!relay && (p.ip !== current?.ip || p.port !== current?.port)) this.pathTick();
    // What a peer off our own networks saw of us is our public face.
    // (IPv4 only: a pong over IPv6 carries no seen address, and our IPv6 addresses need no NAT mapping)
    if (!relay && !isHandle(p.ip) && !this.isLocal(p.ip) && this.reflexive.observe(name, p.ip, p.seenIp, p.seenPort)) {
      const v = this.reflexive.view();
      this.log.info({ reflexive: v.reflexive, nat: v.nat }, 'reflexive address learned');
      this.candidatesMaybeChanged();
      // Our mapping may have changed under us: ask the STUN servers again (no-op without any).
      void this.discover();
    }
  }

  /**
   * The control plane's view of the peers changed: update the peer table, paths and handshakes
   * for the peers that changed only (one host's republish costs one peer's work here).
   */
  private onPeerChange(c: PeerChange): void {
    const upserted: string[] = [];
    const removed: string[] = [];
    const renewed: string[] = [];
    for (const m of [c.added, c.changed]) {
      for (const [name, rec] of m) {
        const old = this.peers.get(name)?.record;
        // A new record (a restart, a move): a peer we were backing off from may answer now.
        if (old && (old.session !== rec.session || old.epoch !== rec.epoch)) renewed.push(name);
        if (this.upsertPeer(name, rec)) upserted.push(name);
        else if (this.peers.has(name)) removed.push(name);
      }
    }
    for (const name of c.removed) if (this.peers.has(name)) removed.push(name);
    for (const name of removed) this.removePeer(name);
    if (upserted.length > 0 || removed.length > 0) this.policy?.peersChanged();
    this.hs?.updatePeers(
      upserted.map((name) => {
        const p = this.peers.get(name)!;
        return { name, publicKey: new Uint8Array(Buffer.from(p.record.publicKey, 'base64')), ip: p.endpoint.ip, port: p.endpoint.port };
      }),
      removed,
      // Known before we were up (the cache or etcd): it may still send on our previous run's
      // session, so we handshake at once rather than wait our turn (./handshakes.ts, 1).
      { known: !this.up },
    );
    for (const name of renewed) this.hs?.nudge(name);
    this.syncPaths(upserted);
    // The workers hold the peers with sessions only: a new peer has none yet, and a removed one
    // with sessions was pushed by the handshakes' onChange when they forgot it.
    if (this.hs && upserted.some((n) => this.hs!.sessionsOf(n).length > 0)) this.schedulePush();
    // New candidates get their first probes now, not at the next path tick.
    if (upserted.length > 0) setImmediate(() => this.pathTick(upserted));
    this.reconcileSubnets();
    if (upserted.length > 0) void this.refreshPins();
  }

  /** Adds or updates one peer in the table and the path choice; false when its record cannot be a peer. */
  private upsertPeer(name: string, rec: HostRecord): boolean {
    const why = this.peers.usable(rec);
    if (why !== null) {
      this.log.warn({ peer: name }, why);
      return false;
    }
    const { all: cands, skipped } = recordCandidates(rec);
    const skippedKey = skipped.join(',');
    if (skippedKey !== (this.skipped6.get(name) ?? '')) {
      if (skipped.length > 0) this.log.warn({ peer: name, skipped }, 'peer publishes unusable IPv6 candidates; skipped');
      this.skipped6.set(name, skippedKey);
    }
    // A peer behind a NAT publishes its mapping as its reflexive address: punch there first.
    const mapped = rec.nat !== 'none' && rec.reflexive ? parseEndpoint(rec.reflexive) : null;
    this.paths.setPeer(name, cands, mayRelay(rec), { punchFirst: mapped ? [mapped] : [] });
    const endpoint = this.paths.current(name) ?? { ip: cands[0]!.ip, port: cands[0]!.port };
    const { added } = this.peers.upsert(name, rec, endpoint);
    if (added) this.log.info({ peer: name, overlayIp: rec.overlayIp, endpoints: [...rec.endpoints, ...(rec.endpoints6 ?? [])] }, 'peer added');
    return true;
  }

  private removePeer(name: string): void {
    if (!this.peers.remove(name)) return;
    this.paths.removePeer(name);
    this.reflexive.forget(name);
    this.probedAt.delete(name);
    this.skipped6.delete(name);
    this.log.info({ peer: name }, 'peer removed');
  }

  private nameOfSlot(slot: number): string | undefined {
    return this.peers.nameOfSlot(slot);
  }

  private nameOfOverlay(ip: number): string | undefined {
    return this.peers.nameOfOverlay(ip);
  }

  /** Coalesces the changes of one tick into one peer-set message to the workers. */
  private schedulePush(): void {
    if (this.pushScheduled) return;
    this.pushScheduled = true;
    setImmediate(() => {
      this.pushScheduled = false;
      this.pushPeers();
    });
  }

  /**
   * Gives the workers every peer that has a session, with all its sessions. Which one to send on
   * is the data plane's choice (it sees confirmations first), never this list's.
   */
  private pushPeers(): void {
    if (!this.engine || !this.hs) return;
    const list: WorkerPeer[] = [];
    for (const [name, p] of this.peers) {
      const sessions = this.hs.sessionsOf(name);
      if (sessions.length === 0) continue;
      const via = p.endpoint.via === undefined ? DIRECT : (this.peers.get(p.endpoint.via)?.slot ?? DIRECT);
      list.push({
        slot: p.slot,
        name,
        overlayIp: p.overlayIp,
        allowed: this.allowed.get(name) ?? [],
        endpointIp: p.endpoint.ip,
        endpointPort: p.endpoint.port,
        endpointVia: via,
        sessions: sessions.map((s) => ({
          keyId: s.keyId,
          txKey: s.sendKey,
          rxKey: s.recvKey,
          txIndex: s.remoteIndex,
          rxIndex: s.localIndex,
          confirmed: s.confirmed,
          sendUntil: this.hs!.sendDeadline(s),
        })),
      });
    }
    this.engine.setPeers(list);
  }

  /** The data plane follows the peer's newest authenticated packet: record it as the path. */
  private onRoam(slot: number, ip: number, port: number, via: number): void {
    const name = this.nameOfSlot(slot);
    const p = name === undefined ? undefined : this.peers.get(name);
    if (!name || !p) return;
    const relay = via === DIRECT ? undefined : this.nameOfSlot(via);
    if (via !== DIRECT && relay === undefined) return;
    const to: Endpoint = relay === undefined ? { ip, port } : { ip: 0, port: 0, via: relay };
    this.paths.onRoam(name, to);
    p.endpoint = to;
    this.hs?.moveEndpoint(name, to.ip, to.port, to.via);
    this.log.info({ peer: name, endpoint: describeEndpoint(to) }, 'peer endpoint moved');
    void this.refreshPins();
  }

  /**
   * The overlay interface's addresses: our IPv4 overlay address with the network's prefix length,
   * and our IPv6 one with the network's /48 (on-link: every peer's IPv6 address is in it, as every
   * peer's IPv4 address is in the IPv4 prefix, so no route per peer).
   */
  private linkAddresses(): string[] {
    const v4 = `${this.overlayIp}/${parseOverlayCidr(this.network.cidr).len}`;
    return this.ipv6 && this.overlayIp6 ? [v4, `${this.overlayIp6}/${PREFIX6_LEN}`] : [v4];
  }

  /**
   * IPv6 on the overlay interface, before it goes up: no link-local address (addr_gen_mode 1)
   * and no router advertisements taken, so the kernel sends nothing of its own into the tunnel.
   * False when the kernel has no IPv6 (the overlay is then IPv4 only).
   */
  private prepareIpv6(ifname: string): boolean {
    const conf = `/proc/sys/net/ipv6/conf/${ifname}`;
    try {
      fs.writeFileSync(`${conf}/addr_gen_mode`, '1');
      fs.writeFileSync(`${conf}/accept_ra`, '0');
      fs.writeFileSync(`${conf}/disable_ipv6`, '0');
      return true;
    } catch (e) {
      this.log.warn({ err: (e as Error).message }, 'no IPv6 on the overlay interface: the overlay carries IPv4 only');
      return false;
    }
  }

  /** What we see of our peers, for the dashboard (agent/view.ts): the status document's values, cheaply. */
  private view(): ViewRecord {
    const stats = this.engine!.stats;
    const r = this.reflexive.view();
    return viewFromAgent({
      now: Date.now(),
      self: this.cfg.name,
      network: this.network.name,
      reflexive: r.reflexive,
      nat: r.nat,
      peers: this.peers.entries(),
      lastRx: (slot) => stats.peer(slot, P_LAST_RX),
      rttSec: (slot) => stats.peer(slot, P_RTT),
      path: (name) => this.paths.state(name),
    });
  }

  /** Packets each data-plane worker received and sent (status self.workers). */
  private workerCounts(engine: DataplaneEngine): { rxPackets: number; txPackets: number }[] {
    return Array.from({ length: engine.workers }, (_, k) => {
      const t = engine.workerStats(k)!.totals;
      return { rxPackets: t[T_RX_PKTS]!, txPackets: t[T_TX_PKTS]! };
    });
  }

  statusDocument(): StatusDocument {
    const view = this.reflexive.view();
    return buildStatus({
      now: Date.now(),
      stats: this.engine!.stats,
      peers: this.peers,
      hs: this.hs,
      paths: this.paths,
      registry: this.registry,
      link: this.linkStatus(),
      policy: this.policy?.status(),
      prefix6: this.ipv6 ? this.prefix6 : undefined,
      self: {
        name: this.cfg.name,
        network: this.network.name,
        overlayIp: this.overlayIp,
        ...(this.ipv6 ? { overlayIp6: this.overlayIp6, overlayPrefix6: formatPrefix6(this.prefix6) } : {}),
        publicKey: Buffer.from(this.keys.publicKey).toString('base64'),
        listenPort: this.udp?.port ?? 0,
        endpoints: [...this.endpoints, ...this.endpoints6],
        interface: this.cfg.interface,
        mtu: this.mtu,
        startedAt: this.startedAt.toISOString(),
        version: PACKAGE_VERSION,
        nodeVersion: process.versions.node,
        crypto: this.engine?.cryptoName ?? '',
        offload: this.tun?.offload ?? false,
        ...(this.engine && this.engine.workers > 1 ? { workers: this.workerCounts(this.engine) } : {}),
        reflexive: view.reflexive,
        nat: view.nat,
        relay: this.cfg.relay,
        lastLocalChange: this.lastLocalChange,
        ...(this.cfg.advertiseRoutes.length > 0 ? { advertisedRoutes: [...this.cfg.advertiseRoutes], snatRoutes: this.cfg.snatRoutes } : {}),
        ...(this.pins.length > 0 ? { endpointPins: this.pins.map((p) => ({ ...p })) } : {}),
        process: processUsage(),
      },
      subnets: this.subnetStatus(),
    });
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
    writeFileAtomicSync(file, JSON.stringify(body, null, 2) + '\n');
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
    // A stop on purpose: tell every peer over its tunnel first (they drop us at once; etcd
    // cannot say this for us, see roster.ts). The worker sends within a poll wake-up.
    // Twice, BYE_FLUSH_MS apart: one lost datagram must not leave a peer holding us until its
    // silence timer (a repeat finds our sessions gone at the other end and is dropped there).
    await step('bye', async () => {
      for (let i = 0; i < BYE_COPIES; i++) {
        this.engine?.byeAll();
        await new Promise((r) => setTimeout(r, BYE_FLUSH_MS));
      }
    });
    await step('status', () => this.status?.stop());
    await step('metrics', () => this.metrics?.stop());
    // (revokes our liveness too; with etcd hung both that and the watch's end wait about 1 s)
    await step('registry', () => withTimeout(this.registry?.close(), 2_000));
    this.etcdLink?.close(); // ends the register/republish waits
    this.hsTimer.close();
    this.pathTimer.close();
    clearInterval(this.discoveryTimer);
    clearInterval(this.viewTimer);
    clearInterval(this.subnetTimer);
    this.changes?.stop();
    await step('netlink', () => this.routeEvents?.close());
    await step('data plane', () => this.engine?.stop());
    await step('handshakes', () => {
      this.hs?.close();
      this.hsTimestamps?.flush();
    });
    await step('tun', () => this.tun?.close());
    if (this.cfg.snatRoutes && this.cfg.advertiseRoutes.length > 0) await step('snat', () => this.gateway.clear(this.cfg.interface));
    await step('udp', () => this.udpGroup.forEach((u) => u.close()));
    await step('etcd', () => {
      this.etcdMember?.close();
      this.etcd?.close();
    });
    this.log.info('stopped');
  }
}

/** The host of an etcd URL ("http://198.18.0.1:2379" -> "198.18.0.1"); '' when it does not parse. */
function hostOf(url: string): string {
  try {
    return new URL(url).hostname;
  } catch {
    return '';
  }
}

function withTimeout<T>(p: Promise<T> | undefined, ms: number): Promise<T | undefined> {
  if (!p) return Promise.resolve(undefined);
  return Promise.race([p, new Promise<undefined>((r) => setTimeout(() => r(undefined), ms).unref())]);
}
