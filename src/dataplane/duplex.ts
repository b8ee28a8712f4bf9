/**
 * Both packet directions of one TUN queue and one UDP socket, as one data-plane worker runs them:
 *
 *   fromTun    TUN -> Outbound (route, seal) -> UDP, one batch
 *   fromUdp    UDP -> Inbound (open, check, deliver) -> TUN, one batch; what the inbound stages
 *              ask of the outbound side (answer a ping, follow a roam, use a confirmed session,
 *              pass a datagram on as a relay) is done at once, on a control batch sent at the end
 *   timers     pings that are due; sending moves off sessions past their deadline; says when the
 *              next ping is due (the worker sleeps until then)
 *   probe, forward, pingAll, byeAll   requests from the control thread
 *
 * Both directions share one session table (./sessions.ts): the duplex alone chooses the send
 * session and owns the counters. It owns no thread and makes no system call itself: the worker (worker.ts) gives it the real
 * TUN and UDP, tests give it fakes (fakes.ts). Everything the control thread must hear about is
 * reported through `events` after it has been acted on here.
 */
import type { Aead } from '../crypto/aead';
import type { WorkerCookies } from '../crypto/cookie';
import type { Mac1Check } from '../crypto/mac1';
import { HandshakeLimiter } from './hslimit';
import { SendList, type PacketBatch } from './batch';
import { Inbound, type InboundEvents } from './inbound';
import type { TunIo, UdpIo } from './io';
import { Outbound } from './outbound';
import { DEFAULT_FLOW_CAPACITY, PacketFilter, type CompiledPolicy } from './policy';
import type { AddrHi, Clock, WorkerPeer } from './peer';
import { Sessions } from './sessions';
import { DROP, type DataplaneStats } from './stats';
import { HEADER_LEN } from './wire';

/** What the duplex reports; each is called after the duplex acted on it (see InboundEvents). */
export type DuplexEvents = Partial<InboundEvents> & {
  /** A packet from the TUN for `dst` found no session to send on (rate-limited, see outbound.ts). */
  want?(dst: number): void;
};

/**
 * The batches and the OS boundaries that move them. The real TUN and UDP wrappers are bound to
 * one batch each (they keep its slots' native addresses), hence one per batch; fakes may be shared.
 */
export interface DuplexIo {
  /** TUN -> UDP: `tun` reads into `batch`, `udp` sends from it. */
  out: { batch: PacketBatch; tun: TunIo; udp: UdpIo };
  /** UDP -> TUN: `udp` receives into `batch`, `tun` writes from it. */
  in: { batch: PacketBatch; udp: UdpIo; tun: TunIo };
  /** Control messages and relayed datagrams (full-size slots), sent by `udp`. */
  ctrl: { batch: PacketBatch; udp: UdpIo };
}

export interface DuplexOptions {
  mtu: number;
  /** This host relays for its peers. */
  relay?: boolean;
  /** mac1 check for handshake messages before they cross to the control thread (inbound.ts). */
  mac1?: Mac1Check;
  /** The handshake flood limits (default: a fresh HandshakeLimiter on `clock`). */
  limiter?: HandshakeLimiter;
  /** Cookie replies for initiations over the handshake budget (inbound.ts). */
  cookies?: WorkerCookies;
  /** The network's IPv6 overlay prefix (control/overlay6.ts Overlay6); absent: IPv6 is not carried. */
  overlay6?: { hi: number; mid: number } | null;
  /** This is worker `index` of `count`: it opens only the sessions it owns (inbound.ts InboundOptions.worker). */
  worker?: { index: number; count: number };
  /** This worker pings the peers (default true; with several workers only the first does). */
  pings?: boolean;
  /** The policy's flow table shared by every worker (policy.ts flowTableBytes); absent: its own. */
  flowTable?: SharedArrayBuffer;
}

/** Slots in the control batch (pongs, probes, pings and relayed datagrams per flush). */
export const CTRL_SLOTS = 32;

export class Duplex {
  readonly sessions: Sessions;
  readonly out: Outbound;
  readonly inb: Inbound;
  /** The network policy: checked on receive (inbound deliver), flows we start tracked on send. */
  readonly policy: PacketFilter;
  private readonly list: SendList;
  private readonly clist: SendList;
  private readonly pings: boolean;

  constructor(
    aead: Aead,
    private readonly stats: DataplaneStats,
    private readonly clock: Clock,
    private readonly io: DuplexIo,
    events: DuplexEvents,
    opts: DuplexOptions,
  ) {
    this.list = new SendList(io.out.batch.capacity);
    this.clist = new SendList(io.ctrl.batch.capacity);
    this.pings = opts.pings ?? true;
    this.sessions = new Sessions(aead, clock);
    this.out = new Outbound(aead, stats, clock, this.sessions);
    if (events.want) this.out.onWant = events.want;
    this.out.setMtu(opts.mtu);
    const out = this.out;
    const cb = io.ctrl.batch;
    const cl = this.clist;
    this.inb = new Inbound(
      aead,
      stats,
      clock,
      this.sessions,
      {
        ping: (slot, t0, ip, port, via, hi) => {
          this.room();
          out.pong(slot, t0, ip, port, via, cb, cl, hi);
          events.ping?.(slot, t0, ip, port, via, hi);
        },
        pong: (...a) => events.pong?.(...a),
        roam: (slot, ip, port, via, hi) => {
          out.roam(slot, ip, port, via, hi);
          events.roam?.(slot, ip, port, via, hi);
        },
        handshake: (...a) => events.handshake?.(...a),
        cookieReply: (data, ip, port, hi) => {
          this.room();
          const k = cl.count;
          cb.buf.set(data, cb.offset(k));
          cb.len[k] = data.length;
          cb.ip[k] = ip;
          cb.port[k] = port;
          cb.hi[3 * k] = hi ? hi[0]! : 0;
          cb.hi[3 * k + 1] = hi ? hi[1]! : 0;
          cb.hi[3 * k + 2] = hi ? hi[2]! : 0;
          cl.idx[k] = k;
          cl.count++;
          events.cookieReply?.(data, ip, port, hi);
        },
        stun: (...a) => events.stun?.(...a),
        relay: (slot, from, data) => {
          this.room();
          out.relay(slot, from, data, cb, cl);
          events.relay?.(slot, from, data);
        },
        confirmed: (...a) => events.confirmed?.(...a),
        bye: (...a) => events.bye?.(...a),
      },
      {
        relay: opts.relay ?? false,
        mac1: opts.mac1,
        // with N workers each limits to 1/N of the host's handshake budget
        limiter: opts.limiter ?? (opts.worker && opts.worker.count > 1 ? new HandshakeLimiter(clock, { share: 1 / opts.worker.count }) : undefined),
        cookies: opts.cookies,
        worker: opts.worker,
      },
    );
    this.policy = new PacketFilter(clock, DEFAULT_FLOW_CAPACITY, opts.flowTable);
    this.inb.policy = this.policy;
    if (opts.overlay6) {
      const { hi, mid } = opts.overlay6;
      this.out.setOverlay6(hi, mid);
      this.inb.setOverlay6(hi, mid);
      this.policy.setOverlay6(hi, mid);
    }
  }

  /** A new network policy for this host (null: none); `counters` see PacketFilter.set. */
  setPolicy(policy: CompiledPolicy | null, counters?: Float64Array): void {
    this.policy.set(policy, counters);
  }

  /** Both directions get the same peer set (declarative: what is not listed is removed). */
  setPeers(peers: readonly WorkerPeer[]): void {
    this.sessions.set(peers);
    this.out.setPeers(peers);
    this.inb.setPeers(peers);
  }

  /** TUN -> UDP: reads up to `maxReads` times, seals and sends. Returns the packets read (0: none ready). */
  fromTun(maxReads?: number): number {
    const { batch, tun, udp } = this.io.out;
    const n = tun.readBatch(batch, maxReads);
    if (n > 0) {
      if (this.policy.active) this.trackFlows(batch, n);
      this.out.process(batch, n, this.list);
      this.send(udp, batch, this.list);
    }
    return n;
  }

  /** UDP -> TUN: one recvmmsg batch, then the control batch it produced. Returns the datagrams received. */
  fromUdp(): number {
    const { batch, udp, tun } = this.io.in;
    const n = udp.recvBatch(batch);
    if (n > 0) {
      if (this.policy.active) this.policy.tick();
      this.clist.count = 0;
      this.inb.process(batch, n, tun);
      this.flushControl();
    }
    return n;
  }

  /**
   * Pings that are due. Returns when (mono ms) the next one falls due as things stand (a packet,
   * a new session or a pingAll may make one due sooner; Infinity: no peer to ping).
   */
  timers(): number {
    const deadline = this.sessions.expire();
    this.clist.count = 0;
    const next = this.pings ? this.out.timers(this.io.ctrl.batch, this.clist) : Infinity;
    this.flushControl();
    return Math.min(next, this.clock.mono() + (deadline - this.clock.now()));
  }

  /** Another worker saw the peer in `slot` move to ip:port (or to relay `via`): send there too. */
  roam(slot: number, ip: number, port: number, via: number, hi: AddrHi): void {
    this.out.roam(slot, ip, port, via, hi);
  }

  /** Another worker got the first packet on session `keyId` of the peer in `slot`: it is confirmed here too. */
  confirm(slot: number, keyId: number): void {
    this.sessions.confirmed(slot, keyId);
  }

  /** Tests a path: a probe to the peer in `slot` at ip:port (hi: IPv6's upper bits, null for IPv4). */
  probe(slot: number, ip: number, port: number, hi: AddrHi = null): void {
    this.clist.count = 0;
    this.out.probe(slot, ip, port, this.io.ctrl.batch, this.clist, hi);
    this.flushControl();
  }

  /** A diagnostic ping stamped t0 on the peer's current path (Outbound.diag). */
  diag(slot: number, t0: number): void {
    this.clist.count = 0;
    this.out.diag(slot, t0, this.io.ctrl.batch, this.clist);
    this.flushControl();
  }

  /** A datagram from the control thread (a handshake message) for `target`, through relay `via`. */
  forward(via: number, target: number, data: Uint8Array): void {
    this.clist.count = 0;
    this.out.forward(via, target, data, this.io.ctrl.batch, this.clist);
    this.flushControl();
  }

  /** The control thread sent an initiation to `ip`: its answer may use the reserved budget. */
  expect(ip: number, hi: ArrayLike<number> | null = null): void {
    this.inb.expect(ip, hi);
  }

  /** Pings every peer at the next timer tick (our address or NAT mapping changed). */
  pingAll(): void {
    this.out.pingAllSoon();
  }

  /** Says bye to every peer with a session now (the agent is stopping on purpose). */
  byeAll(): void {
    let next = 0;
    do {
      this.clist.count = 0;
      next = this.out.bye(next, this.io.ctrl.batch, this.clist);
      this.flushControl();
    } while (next >= 0);
  }

  close(): void {
    this.out.close();
    this.inb.close();
    this.sessions.close();
  }

  /** The flows the packets read from the TUN start: their replies pass the policy (./policy.ts). */
  private trackFlows(batch: PacketBatch, n: number): void {
    this.policy.tick();
    for (let i = 0; i < n; i++) {
      const len = batch.len[i]!;
      if (len >= 20) this.policy.track(batch.buf, batch.offset(i) + HEADER_LEN, len);
    }
  }

  /** Sends the control batch when it is full, so the next control message has a slot. */
  private room(): void {
    if (this.clist.count === this.io.ctrl.batch.capacity) this.flushControl();
  }

  private flushControl(): void {
    this.send(this.io.ctrl.udp, this.io.ctrl.batch, this.clist);
    this.clist.count = 0;
  }

  private send(udp: UdpIo, batch: PacketBatch, list: SendList): void {
    if (list.count === 0) return;
    const sent = udp.sendBatch(batch, list);
    if (sent < list.count) this.stats.drops[DROP.sendFailed]! += list.count - sent;
  }
}

