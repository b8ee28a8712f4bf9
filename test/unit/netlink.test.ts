import { describe, expect, it } from 'vitest';
import {
  FakeRouteEvents,
  NLMSG_DONE,
  NLMSG_ERROR,
  NLMSG_HDRLEN,
  NLMSG_OVERRUN,
  RTM_DELADDR,
  RTM_DELLINK,
  RTM_DELROUTE,
  RTM_NEWADDR,
  RTM_NEWLINK,
  RTM_NEWROUTE,
  countRouteMessages,
  noRouteEvents,
} from '../../src/os/netlink';
import { rng } from '../helpers/rng';

/** One netlink message: a 16-byte nlmsghdr with `payload` bytes after it, padded to 4. */
function msg(type: number, payload = 0, lenOverride?: number): Buffer {
  const len = NLMSG_HDRLEN + payload;
  const b = Buffer.alloc((len + 3) & ~3, 0xaa);
  b.writeUInt32LE(lenOverride ?? len, 0);
  b.writeUInt16LE(type, 4);
  b.writeUInt16LE(0, 6); // flags
  b.writeUInt32LE(0, 8); // seq
  b.writeUInt32LE(0, 12); // pid
  return b;
}

function count(buf: Buffer, len = buf.length) {
  const ev = noRouteEvents();
  const ok = countRouteMessages(buf, len, ev);
  return { ok, ...ev };
}

describe('countRouteMessages', () => {
  it('counts each message type of a datagram holding several messages', () => {
    const buf = Buffer.concat([
      msg(RTM_NEWADDR, 40),
      msg(RTM_DELADDR, 41), // 57 bytes, padded to 60: the next header starts aligned
      msg(RTM_NEWROUTE, 44),
      msg(RTM_DELROUTE, 43),
      msg(RTM_NEWROUTE, 3),
      msg(RTM_NEWLINK, 1000),
      msg(RTM_DELLINK, 0),
    ]);
    expect(count(buf)).toEqual({ ok: true, addr: 2, route: 3, link: 2, overflow: false });
  });

  it("does not count cladnet's own routes (protocol 77: subnet routes, endpoint pins)", () => {
    const ours = msg(RTM_NEWROUTE, 12);
    ours[NLMSG_HDRLEN + 5] = 77;
    const kernel = msg(RTM_DELROUTE, 12);
    kernel[NLMSG_HDRLEN + 5] = 2;
    expect(count(Buffer.concat([ours, kernel, ours]))).toEqual({ ok: true, addr: 0, route: 1, link: 0, overflow: false });
  });

  it('ignores control and unknown types, flags NLMSG_OVERRUN as an overflow', () => {
    expect(count(Buffer.concat([msg(NLMSG_DONE), msg(NLMSG_ERROR, 20), msg(999, 8), msg(RTM_NEWADDR)]))).toEqual({
      ok: true,
      addr: 1,
      route: 0,
      link: 0,
      overflow: false,
    });
    expect(count(msg(NLMSG_OVERRUN))).toMatchObject({ ok: true, overflow: true });
  });

  it('accepts an empty datagram and a last message without trailing padding', () => {
    expect(count(Buffer.alloc(0))).toEqual({ ok: true, addr: 0, route: 0, link: 0, overflow: false });
    const two = Buffer.concat([msg(RTM_NEWADDR, 4), msg(RTM_NEWROUTE, 1)]);
    expect(count(two, two.length - 3)).toMatchObject({ ok: true, addr: 1, route: 1 }); // 17-byte message ends the buffer
  });

  it('stops at a malformed header and keeps the counts before it', () => {
    const good = msg(RTM_NEWADDR, 8);
    expect(count(Buffer.concat([good, msg(RTM_NEWROUTE, 0, 8)]))).toMatchObject({ ok: false, addr: 1, route: 0 }); // len < header
    expect(count(Buffer.concat([good, msg(RTM_NEWROUTE, 0, 0)]))).toMatchObject({ ok: false, addr: 1, route: 0 }); // len 0 would loop
    expect(count(Buffer.concat([good, msg(RTM_NEWROUTE, 8, 400)]))).toMatchObject({ ok: false, addr: 1, route: 0 }); // past the end
    expect(count(Buffer.concat([good, Buffer.alloc(10)]))).toMatchObject({ ok: false, addr: 1 }); // a short tail
    expect(count(msg(RTM_NEWADDR, 0, 0xffffffff))).toMatchObject({ ok: false, addr: 0 }); // a huge length
  });

  it('reads only the first len bytes, and never past the end of the buffer', () => {
    const buf = Buffer.concat([msg(RTM_NEWADDR), msg(RTM_NEWROUTE)]);
    expect(count(buf, NLMSG_HDRLEN)).toMatchObject({ ok: true, addr: 1, route: 0 });
    expect(count(buf, 10_000)).toMatchObject({ ok: true, addr: 1, route: 1 });
  });

  it('reads through a view at an offset (the native buffer is a view)', () => {
    const backing = Buffer.concat([Buffer.alloc(7, 0xff), msg(RTM_NEWLINK), msg(RTM_DELADDR)]);
    const view = new Uint8Array(backing.buffer, backing.byteOffset + 7, backing.length - 7);
    expect(count(Buffer.from(view.buffer, view.byteOffset, view.length))).toMatchObject({ ok: true, link: 1, addr: 1 });
  });

  it('never throws on random bytes (20 000 buffers)', () => {
    const r = rng(5);
    let bad = 0;
    for (let i = 0; i < 20_000; i++) {
      const b = Buffer.alloc(Math.floor(r() * 200));
      for (let j = 0; j < b.length; j++) b[j] = Math.floor(r() * 256);
      // Plausible small lengths half of the time, so parsing gets past the first header.
      if (b.length >= 4 && r() < 0.5) b.writeUInt32LE(16 + Math.floor(r() * 40), 0);
      const ev = noRouteEvents();
      try {
        countRouteMessages(b, Math.floor(r() * 260), ev);
      } catch (e) {
        throw new Error(`threw on ${b.toString('hex')}: ${String(e)}`);
      }
      if (ev.addr + ev.route + ev.link > Math.floor(b.length / NLMSG_HDRLEN)) bad++;
    }
    expect(bad).toBe(0);
  });
});

describe('FakeRouteEvents', () => {
  it('accumulates pushed events, and drain returns and clears them', () => {
    const f = new FakeRouteEvents();
    expect(f.drain()).toEqual(noRouteEvents());
    f.push({ addr: 2 });
    f.push({ route: 1, link: 3 });
    f.push({ overflow: true });
    f.push({ addr: 1, overflow: false });
    expect(f.drain()).toEqual({ addr: 3, route: 1, link: 3, overflow: true });
    expect(f.drain()).toEqual(noRouteEvents());
    expect(f.drains).toBe(3);
    expect(f.fd).toBe(-1);
  });

  it('drops pending events on close', () => {
    const f = new FakeRouteEvents();
    f.push({ addr: 1 });
    f.close();
    expect(f.closed).toBe(true);
    expect(f.drain()).toEqual(noRouteEvents());
  });
});
