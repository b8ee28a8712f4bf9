import { describe, expect, it } from 'vitest';
import { MAX_IFNAME, newRunId, planTopology, setupCommands, PlanError } from '../../src/testbed/plan';
import { formatCmd, inNs, recordingRunner } from '../../src/testbed/run';
import { parsePing, repeated, udpDatagrams } from '../../src/testbed/traffic';
import { siteLanCommands } from '../../src/testbed/sites';

const UNDERLAY = /^198\.1[89]\.\d{1,3}\.\d{1,3}$/;

describe('run ids and names', () => {
  it('makes cn + 4 hex digits, different each time', () => {
    const ids = new Set(Array.from({ length: 50 }, () => newRunId()));
    for (const id of ids) expect(id).toMatch(/^cn[0-9a-f]{4}$/);
    expect(ids.size).toBeGreaterThan(40);
  });

  it('prefixes every namespace and device with the run id and keeps devices within IFNAMSIZ', () => {
    const p = planTopology({
      id: 'cnbeef',
      hosts: [...Array.from({ length: 200 }, () => ({})), { name: 'lan1', site: 'office' }],
      sites: [{ name: 'office', nat: 'masquerade' }],
    });
    for (const ns of p.namespaces) expect(ns.startsWith('cnbeef-')).toBe(true);
    for (const l of p.links) {
      for (const end of [l.a, l.b]) {
        expect(end.dev.startsWith('cnbeef-')).toBe(true);
        expect(end.dev.length).toBeLessThanOrEqual(MAX_IFNAME);
      }
    }
    const devs = p.links.flatMap((l) => [`${l.a.ns}/${l.a.dev}`, `${l.b.ns}/${l.b.dev}`]);
    expect(new Set(devs).size).toBe(devs.length);
    expect(new Set(p.namespaces).size).toBe(p.namespaces.length);
  });

  it('rejects bad ids, duplicate names, unknown sites and too many hosts, naming the field', () => {
    expect(() => planTopology({ id: 'CN-1', hosts: 1 })).toThrow(/^id:/);
    expect(() => planTopology({ hosts: [{ name: 'a' }, { name: 'a' }] })).toThrow(/hosts\[1\]\.name/);
    expect(() => planTopology({ hosts: [{ name: 'router' }] })).toThrow(PlanError);
    expect(() => planTopology({ hosts: [{ site: 'nowhere' }] })).toThrow(/hosts\[0\]\.site/);
    expect(() => planTopology({ hosts: 255 })).toThrow(/more than 254/);
    expect(() => planTopology({ hosts: 0 })).toThrow(/at least one/);
    expect(() => planTopology({ hosts: 1, sites: [{ name: 's', nat: 'cone' as never }] })).toThrow(/sites\[0\]\.nat/);
  });
});

describe('address plan', () => {
  it('puts plain host i on 198.18.i.2/24 with the router at 198.18.i.1 and 198.18.0.1', () => {
    const p = planTopology({ id: 'cn0001', hosts: 3 });
    expect(p.routerNs).toBe('cn0001-router');
    expect(p.routerIp).toBe('198.18.0.1');
    expect(p.namespaces).toEqual(['cn0001-router', 'cn0001-h1', 'cn0001-h2', 'cn0001-h3']);
    expect(p.hosts).toEqual([
      { name: 'h1', ns: 'cn0001-h1', dev: 'cn0001-x1', underlayIp: '198.18.1.2', gateway: '198.18.1.1' },
      { name: 'h2', ns: 'cn0001-h2', dev: 'cn0001-x2', underlayIp: '198.18.2.2', gateway: '198.18.2.1' },
      { name: 'h3', ns: 'cn0001-h3', dev: 'cn0001-x3', underlayIp: '198.18.3.2', gateway: '198.18.3.1' },
    ]);
    expect(p.links[1]).toEqual({
      a: { ns: 'cn0001-router', dev: 'cn0001-r2', cidr: '198.18.2.1/24' },
      b: { ns: 'cn0001-h2', dev: 'cn0001-x2', cidr: '198.18.2.2/24' },
    });
  });

  it('gives sites the next internet slots and a 198.19.s.0/24 LAN, all inside 198.18.0.0/15', () => {
    const p = planTopology({
      id: 'cn0002',
      hosts: [{ name: 'a' }, { name: 'b', site: 'home' }, { name: 'c' }, { name: 'd', site: 'home' }, { name: 'e', site: 'cafe' }],
      sites: [
        { name: 'home', nat: 'masquerade' },
        { name: 'cafe', nat: 'random' },
      ],
    });
    expect(p.hosts.map((h) => [h.name, h.underlayIp, h.gateway, h.site])).toEqual([
      ['a', '198.18.1.2', '198.18.1.1', undefined],
      ['b', '198.19.1.2', '198.19.1.1', 'home'],
      ['c', '198.18.2.2', '198.18.2.1', undefined],
      ['d', '198.19.1.3', '198.19.1.1', 'home'],
      ['e', '198.19.2.2', '198.19.2.1', 'cafe'],
    ]);
    expect(p.sites.map((s) => [s.name, s.ns, s.wanIp, s.wanGateway, s.lanCidr])).toEqual([
      ['home', 'cn0002-site-home', '198.18.3.2', '198.18.3.1', '198.19.1.0/24'],
      ['cafe', 'cn0002-site-cafe', '198.18.4.2', '198.18.4.1', '198.19.2.0/24'],
    ]);
    for (const l of p.links) for (const c of [l.a.cidr, l.b.cidr]) if (c) expect(c.split('/')[0]).toMatch(UNDERLAY);
  });
});

describe('setup commands', () => {
  it('builds a plain topology with exactly these commands', () => {
    const cmds = setupCommands(planTopology({ id: 'cn0003', hosts: 2 })).map(formatCmd);
    expect(cmds).toEqual([
      'ip netns add cn0003-router',
      'ip netns add cn0003-h1',
      'ip netns add cn0003-h2',
      'ip -n cn0003-router link set lo up',
      'ip -n cn0003-h1 link set lo up',
      'ip -n cn0003-h2 link set lo up',
      'ip -n cn0003-router addr add 198.18.0.1/32 dev lo',
      'ip netns exec cn0003-router sysctl -q -w net.ipv4.ip_forward=1',
      'ip -n cn0003-router link add cn0003-r1 type veth peer name cn0003-x1 netns cn0003-h1',
      'ip -n cn0003-router addr add 198.18.1.1/24 dev cn0003-r1',
      'ip -n cn0003-h1 addr add 198.18.1.2/24 dev cn0003-x1',
      'ip -n cn0003-router link set cn0003-r1 up',
      'ip -n cn0003-h1 link set cn0003-x1 up',
      'ip -n cn0003-router link add cn0003-r2 type veth peer name cn0003-x2 netns cn0003-h2',
      'ip -n cn0003-router addr add 198.18.2.1/24 dev cn0003-r2',
      'ip -n cn0003-h2 addr add 198.18.2.2/24 dev cn0003-x2',
      'ip -n cn0003-router link set cn0003-r2 up',
      'ip -n cn0003-h2 link set cn0003-x2 up',
      'ip -n cn0003-h1 route add default via 198.18.1.1',
      'ip -n cn0003-h2 route add default via 198.18.2.1',
    ]);
  });

  it('leaves out the firewall of a NAT site with firewall: false (a plain masquerade rule)', () => {
    const plan = planTopology({
      id: 'cn0005',
      hosts: [{ site: 'n' }, { site: 'f' }],
      sites: [
        { name: 'n', nat: 'masquerade', firewall: false },
        { name: 'f', nat: 'masquerade' },
      ],
    });
    expect(plan.sites.map((s) => s.firewall)).toEqual([false, true]);
    const cmds = setupCommands(plan).map(formatCmd);
    expect(cmds.filter((c) => c.includes('site-n nft'))).toEqual([
      `ip netns exec cn0005-site-n nft 'add table ip cladnet_nat'`,
      `ip netns exec cn0005-site-n nft 'add chain ip cladnet_nat postrouting { type nat hook postrouting priority 100 ; }'`,
      `ip netns exec cn0005-site-n nft 'add rule ip cladnet_nat postrouting oifname "cn0005-x1" masquerade'`,
    ]);
    expect(cmds).toContain(`ip netns exec cn0005-site-f nft 'add rule ip cladnet_nat input iifname "cn0005-x2" drop'`);
  });

  it('NATs a site on its internet device, port-randomizing for nat "random", firewalls NAT sites and routes a plain site', () => {
    const plan = planTopology({
      id: 'cn0004',
      hosts: [{ site: 'n' }, { site: 'r' }, { site: 'p' }],
      sites: [
        { name: 'n', nat: 'masquerade' },
        { name: 'r', nat: 'random' },
        { name: 'p', nat: 'none' },
      ],
    });
    const cmds = setupCommands(plan).map(formatCmd);
    expect(cmds).toContain(`ip netns exec cn0004-site-n nft 'add rule ip cladnet_nat postrouting oifname "cn0004-x1" masquerade'`);
    expect(cmds).toContain(
      `ip netns exec cn0004-site-r nft 'add rule ip cladnet_nat postrouting oifname "cn0004-x2" masquerade fully-random'`,
    );
    expect(cmds).toContain('ip -n cn0004-router route add 198.19.3.0/24 via 198.18.3.2');
    expect(cmds.filter((c) => c.includes('site-p nft'))).toEqual([]);
    // A NAT site drops unsolicited inbound in filter hooks (before conntrack confirms an entry).
    expect(cmds.filter((c) => c.includes('site-n nft'))).toEqual([
      `ip netns exec cn0004-site-n nft 'add table ip cladnet_nat'`,
      `ip netns exec cn0004-site-n nft 'add chain ip cladnet_nat postrouting { type nat hook postrouting priority 100 ; }'`,
      `ip netns exec cn0004-site-n nft 'add rule ip cladnet_nat postrouting oifname "cn0004-x1" masquerade'`,
      `ip netns exec cn0004-site-n nft 'add chain ip cladnet_nat input { type filter hook input priority 0 ; policy accept ; }'`,
      `ip netns exec cn0004-site-n nft 'add rule ip cladnet_nat input ct state established,related accept'`,
      `ip netns exec cn0004-site-n nft 'add rule ip cladnet_nat input iifname "cn0004-s1br" accept'`,
      `ip netns exec cn0004-site-n nft 'add rule ip cladnet_nat input iifname "cn0004-x1" drop'`,
      `ip netns exec cn0004-site-n nft 'add chain ip cladnet_nat forward { type filter hook forward priority 0 ; policy accept ; }'`,
      `ip netns exec cn0004-site-n nft 'add rule ip cladnet_nat forward ct state established,related accept'`,
      `ip netns exec cn0004-site-n nft 'add rule ip cladnet_nat forward iifname "cn0004-s1br" accept'`,
      `ip netns exec cn0004-site-n nft 'add rule ip cladnet_nat forward iifname "cn0004-x1" drop'`,
    ]);
    expect(cmds).toContain(`ip netns exec cn0004-site-r nft 'add rule ip cladnet_nat forward iifname "cn0004-x2" drop'`);
    // The NAT rules come after the links whose devices they name.
    const lastLink = cmds.map((c) => c.includes('type veth')).lastIndexOf(true);
    expect(cmds.findIndex((c) => c.includes(' nft '))).toBeGreaterThan(lastLink);
    expect(cmds).toContain('ip -n cn0004-site-n link set cn0004-s1l2 master cn0004-s1br');
    expect(cmds).toContain('ip -n cn0004-h1 route add default via 198.19.1.1');
    // Namespaces exist before anything is put into them.
    const lastAdd = cmds.map((c) => c.startsWith('ip netns add')).lastIndexOf(true);
    expect(cmds.slice(0, lastAdd + 1).every((c) => c.startsWith('ip netns add'))).toBe(true);
  });
});

describe('runner helpers', () => {
  it('prefixes ip netns exec and quotes for transcripts', async () => {
    expect(inNs('cn0005-h1', ['ping', '-c', '1', '100.64.0.2'])).toEqual(['ip', 'netns', 'exec', 'cn0005-h1', 'ping', '-c', '1', '100.64.0.2']);
    expect(formatCmd(['nft', 'add rule x', "it's"])).toBe(`nft 'add rule x' 'it'\\''s'`);
    const { runner, transcript } = recordingRunner((c) => (c[0] === 'false' ? { code: 1 } : {}));
    expect((await runner(['true'])).code).toBe(0);
    expect((await runner(['false'])).code).toBe(1);
    expect(transcript).toEqual(['true', 'false']);
  });
});

describe('traffic parsers', () => {
  it('parses ping summaries', () => {
    const out = '--- 100.64.0.2 ping statistics ---\n3 packets transmitted, 3 received, 0% packet loss, time 402ms\nrtt min/avg/max/mdev = 0.311/0.402/0.530/0.091 ms\n';
    expect(parsePing(out, 0)).toMatchObject({ ok: true, sent: 3, received: 3, rtt: { min: 0.311, avg: 0.402, max: 0.53 } });
    const lost = '3 packets transmitted, 0 received, 100% packet loss, time 2040ms\n';
    expect(parsePing(lost, 1)).toMatchObject({ ok: false, sent: 3, received: 0, rtt: null });
  });

  it('repeats a marker to an exact length', () => {
    const b = repeated('AB-', 8);
    expect(b.toString()).toBe('AB-AB-AB');
  });

  it('extracts UDP payloads from Ethernet and Linux SLL2 pcaps', () => {
    const ipUdp = (payload: Buffer) => {
      const ip = Buffer.alloc(28);
      ip[0] = 0x45;
      ip.writeUInt16BE(28 + payload.length, 2);
      ip[8] = 64;
      ip[9] = 17;
      Buffer.from([198, 18, 1, 2]).copy(ip, 12);
      Buffer.from([198, 18, 3, 2]).copy(ip, 16);
      ip.writeUInt16BE(40000, 20);
      ip.writeUInt16BE(51820, 22);
      ip.writeUInt16BE(8 + payload.length, 24);
      return Buffer.concat([ip, payload]);
    };
    const pcap = (linkType: number, link: Buffer, pkt: Buffer) => {
      const gh = Buffer.alloc(24);
      gh.writeUInt32LE(0xa1b2c3d4, 0);
      gh.writeUInt16LE(2, 4);
      gh.writeUInt16LE(4, 6);
      gh.writeUInt32LE(262144, 16);
      gh.writeUInt32LE(linkType, 20);
      const frame = Buffer.concat([link, pkt]);
      const rh = Buffer.alloc(16);
      rh.writeUInt32LE(frame.length, 8);
      rh.writeUInt32LE(frame.length, 12);
      return Buffer.concat([gh, rh, frame]);
    };
    const payload = Buffer.from('0400000001000000', 'hex');
    const eth = Buffer.alloc(14);
    eth.writeUInt16BE(0x0800, 12);
    const sll2 = Buffer.alloc(20);
    sll2.writeUInt16BE(0x0800, 0);
    for (const file of [pcap(1, eth, ipUdp(payload)), pcap(276, sll2, ipUdp(payload))]) {
      expect(udpDatagrams(file)).toEqual([{ src: '198.18.1.2', dst: '198.18.3.2', srcPort: 40000, dstPort: 51820, payload }]);
    }
  });
});

describe('site LANs behind gateways (src/testbed/sites.ts)', () => {
  it('builds a bridge with the plain host, one veth per gateway, gateway k at .(1+k), default via the first', () => {
    expect(siteLanCommands('cn1-la', 3, [{ name: 'gx', ns: 'cn1-gx' }, { name: 'gy', ns: 'cn1-gy' }]).map((c) => c.join(' '))).toEqual([
      'ip -n cn1-la link add br0 type bridge',
      'ip -n cn1-la link set br0 up',
      'ip -n cn1-la address add 198.19.3.10/24 dev br0',
      'ip -n cn1-la link add p0 type veth peer name lan3 netns cn1-gx',
      'ip -n cn1-la link set p0 master br0 up',
      'ip -n cn1-gx address add 198.19.3.1/24 dev lan3',
      'ip -n cn1-gx link set lan3 up',
      'ip -n cn1-la link add p1 type veth peer name lan3 netns cn1-gy',
      'ip -n cn1-la link set p1 master br0 up',
      'ip -n cn1-gy address add 198.19.3.2/24 dev lan3',
      'ip -n cn1-gy link set lan3 up',
      'ip -n cn1-la route add default via 198.19.3.1',
    ]);
    expect(() => siteLanCommands('cn1-la', 0, [{ name: 'g', ns: 'cn1-g' }])).toThrow('outside 1..254');
    expect(() => siteLanCommands('cn1-la', 1, [])).toThrow('1 to 8 gateways');
  });
});
