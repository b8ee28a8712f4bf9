import { describe, expect, it } from 'vitest';
import { createAead } from '../../src/crypto/aead';
import { PacketBatch, SendList, slotSizeFor } from '../../src/dataplane/batch';
import { Outbound } from '../../src/dataplane/outbound';
import type { WorkerPeer } from '../../src/dataplane/peer';
import { DataplaneStats, DROP } from '../../src/dataplane/stats';
import { HEADER_LEN } from '../../src/dataplane/wire';

const clock = { now: () => 1_000, mono: () => 1_000 };
const OVERLAY_B = 0x64400002;

function peer(over: Partial<WorkerPeer> = {}): WorkerPeer {
  return {
    slot: 0,
    name: 'b',
    overlayIp: OVERLAY_B,
    allowed: [],
    endpointIp: 0xc6120202,
    endpointPort: 51820,
    keyId: 'hs1',
    txKey: new Uint8Array(32).fill(1),
    rxKey: new Uint8Array(32).fill(2),
    txIndex: 11,
    rxIndex: 22,
    ...over,
  };
}

function oneIpv4Packet(batch: PacketBatch): void {
  const off = batch.offset(0) + HEADER_LEN;
  batch.buf.fill(0, off, off + 40);
  batch.buf[off] = 0x45;
  batch.buf.writeUInt16BE(40, off + 2);
  batch.buf.writeUInt32BE(0x64400001, off + 12);
  batch.buf.writeUInt32BE(OVERLAY_B, off + 16);
  batch.len[0] = 40;
}

describe('Outbound and unconfirmed sessions', () => {
  it('sends nothing on a session the initiator has not used yet, then everything once it has', async () => {
    const stats = new DataplaneStats();
    const out = new Outbound(await createAead(), stats, clock);
    const slot = slotSizeFor(1420);
    const batch = new PacketBatch(Buffer.alloc(slot * 4), slot, 4);
    const list = new SendList(4);
    const ctrl = new PacketBatch(Buffer.alloc(slot * 4), slot, 4);
    const clist = new SendList(4);

    out.setPeers([peer({ unconfirmed: true })]);
    oneIpv4Packet(batch);
    out.process(batch, 1, list);
    expect(list.count).toBe(0);
    expect(stats.drops[DROP.noSession]).toBe(1);
    out.timers(ctrl, clist);
    expect(clist.count).toBe(0); // no pings either

    out.promote(0, 'hs1'); // the inbound side saw the initiator's first packet on it
    oneIpv4Packet(batch);
    out.process(batch, 1, list);
    expect(list.count).toBe(1);
    expect(batch.buf.readUInt32LE(batch.offset(0) + 4)).toBe(11); // sealed for the peer's index

    // The control plane's next peer set says confirmed: still sendable, counter kept.
    out.setPeers([peer({ unconfirmed: false })]);
    oneIpv4Packet(batch);
    out.process(batch, 1, list);
    expect(list.count).toBe(1);
    expect(batch.buf.readUInt32LE(batch.offset(0) + 8)).toBe(1); // second packet on the session
  });
});
