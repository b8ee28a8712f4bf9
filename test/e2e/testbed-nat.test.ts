import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTopology, currentAddresses, flushConntrack, listConntrack, replaceAddress, type Topology } from '../../src/testbed/topology';
import { startUdpEndpoint, type UdpEndpoint } from '../../src/testbed/traffic';

/**
 * The test bed's NAT sites behave like the clouds' NAT gateways, shown with plain UDP (no agent):
 * 'masquerade' maps endpoint-independently and keeps the port, 'random' maps per destination,
 * both drop unsolicited inbound without spoiling later mappings, and hole punching works between
 * two 'masquerade' sites but not between two 'random' ones. Also the roaming tools that act on
 * the bed: a conntrack flush, and an address replaced under a running host.
 */
const isRoot = process.getuid?.() === 0;
const ECHO_PORT = 5000;
const NO_REPLY_MS = 400;

describe.skipIf(!isRoot)('NAT sites of the test bed', () => {
  let topo: Topology;
  const endpoints: UdpEndpoint[] = [];
  const wan = (site: string) => topo.plan.sites.find((s) => s.name === site)!.wanIp;
  const open = async (host: string, port: number) => {
    const e = await startUdpEndpoint(topo, topo.host(host).ns, port);
    endpoints.push(e);
    return e;
  };
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  beforeAll(async () => {
    topo = await createTopology({
      hosts: [
        { name: 'i1' },
        { name: 'i2' },
        { name: 'm1', site: 'ma' },
        { name: 'm2', site: 'mb' },
        { name: 'r1', site: 'ra' },
        { name: 'r2', site: 'rb' },
      ],
      sites: [
        { name: 'ma', nat: 'masquerade' },
        { name: 'mb', nat: 'masquerade' },
        { name: 'ra', nat: 'random' },
        { name: 'rb', nat: 'random' },
      ],
    });
  });
  afterAll(async () => {
    await Promise.all(endpoints.map((e) => e.close().catch(() => undefined)));
    await topo?.destroy();
  });

  /** Where `from` appears on the internet when it sends from its port to `observer`. */
  async function publicAddress(from: UdpEndpoint, observer: UdpEndpoint, tag: string): Promise<{ ip: string; port: number }> {
    const host = topo.hosts.find((h) => h.ns === observer.ns)!;
    await from.send(host.underlayIp, observer.port, tag);
    const m = await observer.waitFor((x) => x.text === tag, 3_000);
    if (!m) throw new Error(`${tag} never reached ${host.name}`);
    return { ip: m.from, port: m.port };
  }

  it('masquerade: one local port appears as the same public ip:port to two destinations (EIM, port kept)', async () => {
    const [o1, o2] = [await open('i1', ECHO_PORT), await open('i2', ECHO_PORT)];
    const m1 = await open('m1', 40001);
    const seen1 = await publicAddress(m1, o1, 'eim-1');
    const seen2 = await publicAddress(m1, o2, 'eim-2');
    expect(seen1).toEqual({ ip: wan('ma'), port: 40001 });
    expect(seen2).toEqual(seen1);
    // The mapping takes replies from either destination.
    await o1.send(wan('ma'), 40001, 'back-1');
    await o2.send(wan('ma'), 40001, 'back-2');
    expect(await m1.waitFor((x) => x.text === 'back-1', 2_000)).toMatchObject({ from: topo.host('i1').underlayIp, port: ECHO_PORT });
    expect(await m1.waitFor((x) => x.text === 'back-2', 2_000)).toMatchObject({ from: topo.host('i2').underlayIp, port: ECHO_PORT });
  });

  it('random: one local port appears with a different public port per destination', async () => {
    const [o1, o2] = [endpoints[0]!, endpoints[1]!];
    const r1 = await open('r1', 40001);
    const seen1 = await publicAddress(r1, o1, 'rnd-1');
    const seen2 = await publicAddress(r1, o2, 'rnd-2');
    expect(seen1.ip).toBe(wan('ra'));
    expect(seen2.ip).toBe(wan('ra'));
    expect(seen2.port).not.toBe(seen1.port);
  });

  it('drops unsolicited inbound at a NAT and keeps the next outbound mapping on the local port', async () => {
    const o1 = endpoints[0]!;
    const m1 = await open('m1', 40002);
    // The internet host knocks first: nothing gets through, and the router keeps no entry for it.
    for (let i = 0; i < 3; i++) await o1.send(wan('ma'), 40002, `knock-${i}`);
    await sleep(NO_REPLY_MS);
    expect(m1.messages()).toEqual([]);
    expect((await listConntrack(topo, 'ma')).filter((l) => l.includes('dport=40002') && l.includes(`src=${topo.host('i1').underlayIp}`) && !l.includes('src=198.19.'))).toEqual([]);
    // Now the host sends to exactly that peer from exactly that port: the mapping keeps the port.
    expect(await publicAddress(m1, o1, 'after-knock')).toEqual({ ip: wan('ma'), port: 40002 });
    await o1.send(wan('ma'), 40002, 'answer');
    expect(await m1.waitFor((x) => x.text === 'answer', 2_000)).not.toBeNull();
    // Also a random site drops what nobody asked for.
    const r1 = await open('r1', 40002);
    await o1.send(wan('ra'), 40002, 'knock-random');
    await sleep(NO_REPLY_MS);
    expect(r1.messages()).toEqual([]);
  });

  /**
   * Each host learns its public address from i1 (as an agent would from a peer or a rendezvous),
   * then both send to each other's public ip:port a few times at once, then exchange messages.
   */
  async function punch(aHost: string, bHost: string, port: number): Promise<{ aGot: string[]; bGot: string[] }> {
    const o1 = endpoints[0]!;
    const [a, b] = [await open(aHost, port), await open(bHost, port)];
    const aPub = await publicAddress(a, o1, `${aHost}-whoami`);
    const bPub = await publicAddress(b, o1, `${bHost}-whoami`);
    for (let i = 0; i < 5; i++) {
      await Promise.all([a.send(bPub.ip, bPub.port, `punch-${i}`), b.send(aPub.ip, aPub.port, `punch-${i}`)]);
      await sleep(50);
    }
    for (let i = 0; i < 3; i++) {
      await a.send(bPub.ip, bPub.port, `a-to-b-${i}`);
      await b.send(aPub.ip, aPub.port, `b-to-a-${i}`);
    }
    await sleep(NO_REPLY_MS);
    const texts = (e: UdpEndpoint, peer: { ip: string }) => e.messages().filter((m) => m.from === peer.ip).map((m) => m.text);
    return { aGot: texts(a, bPub), bGot: texts(b, aPub) };
  }

  it('hole punching works between two masquerade sites', async () => {
    const { aGot, bGot } = await punch('m1', 'm2', 41000);
    // The first punch of each side may die at the other NAT before that side has sent; the rest pass.
    expect(aGot).toEqual(expect.arrayContaining(['punch-4', 'b-to-a-0', 'b-to-a-1', 'b-to-a-2']));
    expect(bGot).toEqual(expect.arrayContaining(['punch-4', 'a-to-b-0', 'a-to-b-1', 'a-to-b-2']));
  });

  it('hole punching fails between two random sites: they need a relay', async () => {
    const { aGot, bGot } = await punch('r1', 'r2', 41000);
    expect(aGot).toEqual([]);
    expect(bGot).toEqual([]);
  });

  it('a conntrack flush makes the NAT forget: inbound is dropped until the host sends again', async () => {
    const o1 = endpoints[0]!;
    const m1 = await open('m1', 40003);
    await publicAddress(m1, o1, 'before-flush');
    await o1.send(wan('ma'), 40003, 'reply-1');
    expect(await m1.waitFor((x) => x.text === 'reply-1', 2_000)).not.toBeNull();
    expect((await flushConntrack(topo, 'ma')).flushed).toBeGreaterThan(0);
    await o1.send(wan('ma'), 40003, 'reply-2');
    await sleep(NO_REPLY_MS);
    expect(m1.messages().map((m) => m.text)).not.toContain('reply-2');
    expect(await publicAddress(m1, o1, 'after-flush')).toEqual({ ip: wan('ma'), port: 40003 });
    await o1.send(wan('ma'), 40003, 'reply-3');
    expect(await m1.waitFor((x) => x.text === 'reply-3', 2_000)).not.toBeNull();
  });

  it('replaceAddress moves a host to a new address on its link and keeps its default route', async () => {
    const o1 = endpoints[0]!;
    for (const [name, expected, seenAs] of [
      ['i2', '198.18.2.3', '198.18.2.3'],
      ['m2', '198.19.2.3', wan('mb')],
    ] as const) {
      const h = topo.plan.hosts.find((x) => x.name === name)!;
      const e = await open(name, 42000); // bound before the move, like an agent's socket
      expect(await replaceAddress(topo, name)).toBe(expected);
      expect(await currentAddresses(topo, name)).toEqual([expected]);
      const route = (await topo.exec(h.ns, ['ip', '-4', 'route', 'show', 'default'])).stdout;
      expect(route).toContain(`default via ${h.gateway} dev ${h.dev}`);
      expect(await publicAddress(e, o1, `${name}-moved`)).toEqual({ ip: seenAs, port: 42000 });
    }
  });
});
