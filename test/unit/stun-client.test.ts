import { describe, expect, it } from 'vitest';
import { StunClient, type StunClientDeps } from '../../src/control/stun-client';
import { encodeBindingError, encodeBindingSuccess, encodeStun, mappedAddress, parseStun } from '../../src/control/stun';
import { isCladnetError } from '../../src/errors';
import { parseIpv4 } from '../../src/util/ipv4';

const SERVER = { ip: parseIpv4('198.51.100.1')!, port: 3478 };
const MAPPED_IP = parseIpv4('203.0.113.5')!;

/** A fake clock with timers, a recording socket and a counting random source. */
class Fakes implements StunClientDeps {
  t = 1000;
  sent: { data: Buffer; ip: number; port: number; at: number }[] = [];
  failSends = 0;
  private timers: { at: number; fn: () => void; live: boolean }[] = [];
  private seq = 0;

  send(data: Buffer, ip: number, port: number): void {
    if (this.failSends > 0) {
      this.failSends--;
      throw new Error('EHOSTUNREACH');
    }
    this.sent.push({ data: Buffer.from(data), ip, port, at: this.t });
  }
  now(): number {
    return this.t;
  }
  setTimer(fn: () => void, ms: number): { cancel(): void } {
    const timer = { at: this.t + ms, fn, live: true };
    this.timers.push(timer);
    return { cancel: () => void (timer.live = false) };
  }
  random(n: number): Buffer {
    const b = Buffer.alloc(n);
    b.writeUInt32BE(++this.seq, n - 4);
    return b;
  }
  /** Moves the clock forward, firing due timers in order. */
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      const due = this.timers.filter((x) => x.live && x.at <= end).sort((a, b) => a.at - b.at)[0];
      if (!due) break;
      due.live = false;
      this.t = due.at;
      due.fn();
    }
    this.t = end;
  }
  liveTimers(): number {
    return this.timers.filter((x) => x.live).length;
  }
  txIdOf(i: number): Buffer {
    const r = parseStun(this.sent[i]!.data);
    if (!r.ok) throw new Error(r.error);
    return r.msg.txId;
  }
}

/** Settles pending promise callbacks. */
const flush = () => new Promise<void>((r) => setImmediate(r));

function settled<T>(p: Promise<T>): { done: boolean; value?: T } {
  const s: { done: boolean; value?: T } = { done: false };
  void p.then((v) => {
    s.done = true;
    s.value = v;
  });
  return s;
}

describe('StunClient', () => {
  it('sends a binding request and resolves with the mapped address of the answer', async () => {
    const f = new Fakes();
    const c = new StunClient(f);
    const q = c.query(SERVER);
    expect(f.sent).toHaveLength(1);
    expect([f.sent[0]!.ip, f.sent[0]!.port]).toEqual([SERVER.ip, SERVER.port]);
    const req = parseStun(f.sent[0]!.data);
    expect(req.ok && [req.msg.method, req.msg.cls, req.msg.fingerprint]).toEqual([1, 'request', true]);
    f.advance(40);
    expect(c.receive(encodeBindingSuccess(f.txIdOf(0), MAPPED_IP, 40000), SERVER.ip, SERVER.port)).toBe(true);
    expect(await q).toEqual({ ip: MAPPED_IP, port: 40000, rttMs: 40 });
    expect(c.pending).toBe(0);
    expect(f.liveTimers()).toBe(0);
  });

  it('accepts a MAPPED-ADDRESS-only answer (RFC 3489 style server)', async () => {
    const f = new Fakes();
    const c = new StunClient(f);
    const q = c.query(SERVER);
    const answer = encodeStun({ method: 1, cls: 'success', txId: f.txIdOf(0), attributes: [mappedAddress(MAPPED_IP, 1234)] });
    expect(c.receive(answer, SERVER.ip, SERVER.port)).toBe(true);
    expect(await q).toMatchObject({ ip: MAPPED_IP, port: 1234 });
  });

  it('retransmits the same request after 300, then 600 ms, and takes a late answer', async () => {
    const f = new Fakes();
    const c = new StunClient(f);
    const q = settled(c.query(SERVER));
    f.advance(299);
    expect(f.sent).toHaveLength(1);
    f.advance(1);
    expect(f.sent).toHaveLength(2);
    f.advance(599);
    expect(f.sent).toHaveLength(2);
    f.advance(1);
    expect(f.sent).toHaveLength(3);
    expect(f.sent.map((s) => s.at - 1000)).toEqual([0, 300, 900]);
    expect(f.sent[1]!.data.equals(f.sent[0]!.data) && f.sent[2]!.data.equals(f.sent[0]!.data)).toBe(true);
    f.advance(100);
    expect(c.receive(encodeBindingSuccess(f.txIdOf(0), MAPPED_IP, 5), SERVER.ip, SERVER.port)).toBe(true);
    await flush();
    expect(q).toEqual({ done: true, value: { ip: MAPPED_IP, port: 5, rttMs: 1000 } });
    f.advance(10_000);
    expect(f.sent).toHaveLength(3);
  });

  it('resolves null after the last retransmission times out (300 + 600 + 1200 ms)', async () => {
    const f = new Fakes();
    const c = new StunClient(f);
    const q = settled(c.query(SERVER));
    f.advance(2099);
    await flush();
    expect(q.done).toBe(false);
    expect(f.sent).toHaveLength(3);
    f.advance(1);
    await flush();
    expect(q).toEqual({ done: true, value: null });
    expect(c.pending).toBe(0);
    // a late answer is no longer ours
    expect(c.receive(encodeBindingSuccess(f.txIdOf(0), MAPPED_IP, 5), SERVER.ip, SERVER.port)).toBe(false);
  });

  it('honours tries and rtoMs', async () => {
    const f = new Fakes();
    const c = new StunClient(f);
    const q = settled(c.query(SERVER, { tries: 2, rtoMs: 50 }));
    f.advance(50);
    expect(f.sent).toHaveLength(2);
    f.advance(99);
    await flush();
    expect(q.done).toBe(false);
    f.advance(1);
    await flush();
    expect(q).toEqual({ done: true, value: null });
  });

  it('ignores answers from the wrong source or with the wrong transaction id', async () => {
    const f = new Fakes();
    const c = new StunClient(f);
    const q = settled(c.query(SERVER));
    const txId = f.txIdOf(0);
    const good = encodeBindingSuccess(txId, MAPPED_IP, 7);
    expect(c.receive(good, SERVER.ip + 1, SERVER.port)).toBe(false);
    expect(c.receive(good, SERVER.ip, SERVER.port + 1)).toBe(false);
    const otherId = Buffer.from(txId);
    otherId[0]! ^= 1;
    expect(c.receive(encodeBindingSuccess(otherId, MAPPED_IP, 7), SERVER.ip, SERVER.port)).toBe(false);
    // not STUN, a truncated answer, a request with our id, another method
    expect(c.receive(Buffer.from([1, 0, 0, 0, 9, 9, 9, 9]), SERVER.ip, SERVER.port)).toBe(false);
    expect(c.receive(good.subarray(0, 30), SERVER.ip, SERVER.port)).toBe(false);
    expect(c.receive(encodeStun({ method: 1, cls: 'request', txId }), SERVER.ip, SERVER.port)).toBe(false);
    expect(c.receive(encodeStun({ method: 2, cls: 'success', txId, attributes: [mappedAddress(1, 1)] }), SERVER.ip, SERVER.port)).toBe(false);
    await flush();
    expect(q.done).toBe(false);
    expect(c.receive(good, SERVER.ip, SERVER.port)).toBe(true);
    await flush();
    expect(q.value).toMatchObject({ ip: MAPPED_IP, port: 7 });
  });

  it('resolves null at once on an error response', async () => {
    const f = new Fakes();
    const c = new StunClient(f);
    const q = c.query(SERVER);
    expect(c.receive(encodeBindingError(f.txIdOf(0), 400, 'Bad Request'), SERVER.ip, SERVER.port)).toBe(true);
    expect(await q).toBeNull();
    expect(f.liveTimers()).toBe(0);
  });

  it('resolves null on a success without a usable address', async () => {
    const f = new Fakes();
    const c = new StunClient(f);
    const q = c.query(SERVER);
    expect(c.receive(encodeStun({ method: 1, cls: 'success', txId: f.txIdOf(0) }), SERVER.ip, SERVER.port)).toBe(true);
    expect(await q).toBeNull();
  });

  it('keeps concurrent queries apart, also to the same server', async () => {
    const f = new Fakes();
    const c = new StunClient(f);
    const other = { ip: parseIpv4('192.0.2.9')!, port: 19302 };
    const a = c.query(SERVER);
    const b = c.query(other);
    const a2 = c.query(SERVER);
    expect(c.pending).toBe(3);
    expect(c.receive(encodeBindingSuccess(f.txIdOf(2), MAPPED_IP, 3), SERVER.ip, SERVER.port)).toBe(true);
    expect(c.receive(encodeBindingSuccess(f.txIdOf(1), MAPPED_IP, 2), other.ip, other.port)).toBe(true);
    // answer for query b replayed from SERVER: not ours
    expect(c.receive(encodeBindingSuccess(f.txIdOf(1), MAPPED_IP, 2), SERVER.ip, SERVER.port)).toBe(false);
    expect(c.receive(encodeBindingSuccess(f.txIdOf(0), MAPPED_IP, 1), SERVER.ip, SERVER.port)).toBe(true);
    expect([(await a)?.port, (await b)?.port, (await a2)?.port]).toEqual([1, 2, 3]);
  });

  it('treats a throwing send as a lost datagram', async () => {
    const f = new Fakes();
    f.failSends = 1;
    const c = new StunClient(f);
    const q = c.query(SERVER);
    expect(f.sent).toHaveLength(0);
    f.advance(300);
    expect(f.sent).toHaveLength(1);
    expect(c.receive(encodeBindingSuccess(f.txIdOf(0), MAPPED_IP, 9), SERVER.ip, SERVER.port)).toBe(true);
    expect((await q)?.port).toBe(9);
  });

  it('close() resolves every pending query with null and stops the timers', async () => {
    const f = new Fakes();
    const c = new StunClient(f);
    const qs = [c.query(SERVER), c.query(SERVER)];
    c.close();
    expect(await Promise.all(qs)).toEqual([null, null]);
    expect(f.liveTimers()).toBe(0);
  });

  it('refuses bad options with ECONFIG', async () => {
    const c = new StunClient(new Fakes());
    for (const opts of [{ tries: 0 }, { tries: 1.5 }, { rtoMs: 0 }, { rtoMs: Number.NaN }]) {
      await expect(c.query(SERVER, opts)).rejects.toSatisfy((e: unknown) => isCladnetError(e, 'ECONFIG'));
    }
  });
});
