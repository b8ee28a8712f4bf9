/**
 * STUN binding transactions (RFC 5389 §7.2.1) over a UDP socket somebody else owns: the agent's
 * data-plane socket, so that the mapped address a server reports is the one peers must use.
 *
 *   1. query() picks a random 96-bit transaction id and sends a binding request to the server;
 *   2. with no answer it retransmits the same request after rtoMs, then 2*rtoMs, ... (`tries`
 *      transmissions in all) and gives up rtoMs * 2^(tries-1) after the last one: null;
 *   3. the owner of the socket hands every STUN datagram it reads to receive(); an answer counts
 *      only when its transaction id is pending AND it comes from the server queried;
 *   4. a binding success with an IPv4 mapped address resolves the query with it; a binding error,
 *      or a success without a usable address, resolves null at once.
 *
 * Nothing here throws at run time: a failing send() counts as a lost transmission. Time and
 * randomness are injected, so tests drive it with a fake clock.
 */
import { CladnetError } from '../errors';
import { isStunPacket, parseStun, encodeBindingRequest, STUN_METHOD_BINDING, STUN_TXID_LEN } from './stun';

export interface StunClientDeps {
  /** Sends one datagram from the shared socket. May throw; that transmission is then lost. */
  send(data: Buffer, ip: number, port: number): void;
  /** Milliseconds, monotonic enough for round-trip times. */
  now(): number;
  setTimer(fn: () => void, ms: number): { cancel(): void };
  /** n cryptographically random bytes (transaction ids must be unguessable: RFC 5389 §6). */
  random(n: number): Buffer;
}

export interface StunServerAddress {
  readonly ip: number;
  readonly port: number;
}

export interface StunMapped {
  /** Our address and port as the server saw them (IPv4 as an unsigned 32-bit number). */
  readonly ip: number;
  readonly port: number;
  /** From the first transmission to the answer, so it includes retransmission waits. */
  readonly rttMs: number;
}

export interface StunQueryOptions {
  /** Transmissions in all (default 3). */
  tries?: number;
  /** Wait after the first transmission in ms (default 300), doubled after each one. */
  rtoMs?: number;
}

export const STUN_DEFAULT_TRIES = 3;
export const STUN_DEFAULT_RTO_MS = 300;

interface Transaction {
  readonly server: StunServerAddress;
  readonly request: Buffer;
  readonly started: number;
  readonly tries: number;
  sent: number;
  rto: number;
  timer: { cancel(): void } | null;
  resolve(v: StunMapped | null): void;
}

export class StunClient {
  private readonly pendingTx = new Map<string, Transaction>();

  constructor(private readonly deps: StunClientDeps) {}

  /** Transactions still waiting for an answer. */
  get pending(): number {
    return this.pendingTx.size;
  }

  /** Asks `server` for our mapped address; null when it does not answer usefully in time. */
  query(server: StunServerAddress, opts: StunQueryOptions = {}): Promise<StunMapped | null> {
    const tries = opts.tries ?? STUN_DEFAULT_TRIES;
    const rtoMs = opts.rtoMs ?? STUN_DEFAULT_RTO_MS;
    if (!Number.isInteger(tries) || tries < 1 || tries > 16) {
      return Promise.reject(new CladnetError('ECONFIG', `stun: tries ${tries} is not an integer from 1 to 16`, { field: 'tries' }));
    }
    if (!Number.isFinite(rtoMs) || rtoMs <= 0) {
      return Promise.reject(new CladnetError('ECONFIG', `stun: rtoMs ${rtoMs} is not a positive number`, { field: 'rtoMs' }));
    }
    let txId = this.deps.random(STUN_TXID_LEN);
    while (this.pendingTx.has(txId.toString('hex'))) txId = this.deps.random(STUN_TXID_LEN);
    const key = txId.toString('hex');
    return new Promise<StunMapped | null>((resolve) => {
      const tx: Transaction = {
        server: { ip: server.ip >>> 0, port: server.port },
        request: encodeBindingRequest(txId),
        started: this.deps.now(),
        tries,
        sent: 0,
        rto: rtoMs,
        timer: null,
        resolve,
      };
      this.pendingTx.set(key, tx);
      this.transmit(key, tx);
    });
  }

  /**
   * Offers a datagram read from the shared socket. Returns true when it answered one of our
   * transactions (and was consumed), false otherwise (not STUN, unknown id, wrong source).
   */
  receive(data: Buffer, fromIp: number, fromPort: number): boolean {
    if (!isStunPacket(data, 0, data.length)) return false;
    const r = parseStun(data);
    if (!r.ok) return false;
    const m = r.msg;
    if (m.method !== STUN_METHOD_BINDING || (m.cls !== 'success' && m.cls !== 'error')) return false;
    const key = m.txId.toString('hex');
    const tx = this.pendingTx.get(key);
    if (!tx || tx.server.ip !== fromIp >>> 0 || tx.server.port !== fromPort) return false;
    const answer = m.cls === 'success' && m.mapped ? { ip: m.mapped.ip, port: m.mapped.port, rttMs: this.deps.now() - tx.started } : null;
    this.finish(key, tx, answer);
    return true;
  }

  /** Gives up every pending transaction: each resolves null. */
  close(): void {
    for (const [key, tx] of [...this.pendingTx]) this.finish(key, tx, null);
  }

  private transmit(key: string, tx: Transaction): void {
    tx.sent++;
    try {
      this.deps.send(tx.request, tx.server.ip, tx.server.port);
    } catch {
      // lost, like any datagram; the timer below retransmits or gives up
    }
    const wait = tx.rto;
    tx.rto *= 2;
    tx.timer = this.deps.setTimer(() => {
      tx.timer = null;
      if (this.pendingTx.get(key) !== tx) return;
      if (tx.sent < tx.tries) this.transmit(key, tx);
      else this.finish(key, tx, null);
    }, wait);
  }

  private finish(key: string, tx: Transaction, answer: StunMapped | null): void {
    tx.timer?.cancel();
    tx.timer = null;
    this.pendingTx.delete(key);
    tx.resolve(answer);
  }
}
