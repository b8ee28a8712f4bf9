/**
 * ReflexiveTracker (src/agent/reflexive.ts): what observers (peers answering our pings, STUN
 * servers) say our address is, and what that says about our NAT. Injected clock.
 */
import { beforeEach, describe, expect, it } from 'vitest';
import { OBSERVATION_TTL_MS, ReflexiveTracker } from '../../src/agent/reflexive';
import { parseIpv4 } from '../../src/util/ipv4';

const ip = (s: string): number => parseIpv4(s)!;

const OWN = ['198.51.100.1', '10.0.0.5'];
const NAT_IP = ip('203.0.113.50');
const OBS_B = ip('192.0.2.2');
const OBS_C = ip('192.0.2.3');
const STUN = ip('192.0.2.100');

let now: number;
let own: string[];
let t: ReflexiveTracker;

beforeEach(() => {
  now = 1_700_000_000_000;
  own = [...OWN];
  t = new ReflexiveTracker(
    () => now,
    () => own,
  );
});

describe('ReflexiveTracker', () => {
  it('knows nothing before the first observation', () => {
    expect(t.view()).toEqual({ reflexive: null, nat: 'unknown', seen: [] });
  });

  it('one observer: a mapping (eim), published as our reflexive address', () => {
    expect(t.observe('b', OBS_B, NAT_IP, 40001)).toBe(true);
    expect(t.view()).toEqual({ reflexive: '203.0.113.50:40001', nat: 'eim', seen: ['203.0.113.50:40001'] });
  });

  it('an observer that sees one of our own addresses: no NAT', () => {
    expect(t.observe('b', OBS_B, ip('198.51.100.1'), 51820)).toBe(true);
    expect(t.view()).toEqual({ reflexive: '198.51.100.1:51820', nat: 'none', seen: ['198.51.100.1:51820'] });
    // Our addresses are asked for each time: after a change the same report means a NAT.
    own = ['198.51.100.9'];
    expect(t.view().nat).toBe('eim');
  });

  it('two observers that agree: still one mapping', () => {
    t.observe('b', OBS_B, NAT_IP, 40001);
    now += 10;
    expect(t.observe('c', OBS_C, NAT_IP, 40001)).toBe(false); // the view did not change
    expect(t.view()).toEqual({ reflexive: '203.0.113.50:40001', nat: 'eim', seen: ['203.0.113.50:40001'] });
  });

  it('two observers that see different ports: the mapping varies by destination', () => {
    t.observe('b', OBS_B, NAT_IP, 40001);
    now += 10;
    expect(t.observe('c', OBS_C, NAT_IP, 40002)).toBe(true);
    // The newest report is shown (not published: nothing else can reach it).
    expect(t.view()).toEqual({ reflexive: '203.0.113.50:40002', nat: 'varies', seen: ['203.0.113.50:40002', '203.0.113.50:40001'] });
    now += 10;
    expect(t.observe('stun:192.0.2.100:3478', STUN, NAT_IP, 40003)).toBe(true); // a new newest
    expect(t.view().seen).toEqual(['203.0.113.50:40003', '203.0.113.50:40002', '203.0.113.50:40001']);
    expect(t.view().nat).toBe('varies');
  });

  it('the same observer re-reporting a new mapping: eim with the new one, not varies', () => {
    t.observe('b', OBS_B, NAT_IP, 40001);
    now += 5_000;
    expect(t.observe('b', OBS_B, NAT_IP, 41234)).toBe(true);
    expect(t.view()).toEqual({ reflexive: '203.0.113.50:41234', nat: 'eim', seen: ['203.0.113.50:41234'] });
  });

  it('two observer names at one observer address are one path seen at different times: the newest wins', () => {
    t.observe('stun:192.0.2.100:3478', STUN, NAT_IP, 40001);
    now += 1_000;
    t.observe('s2', STUN, NAT_IP, 40777);
    expect(t.view()).toEqual({ reflexive: '203.0.113.50:40777', nat: 'eim', seen: ['203.0.113.50:40777'] });
  });

  it('an observer reporting a new mapping makes the others\' older reports stale (our NAT forgot us)', () => {
    t.observe('b', OBS_B, NAT_IP, 40000);
    t.observe('stun:x', STUN, NAT_IP, 40000, 150_000);
    expect(t.view()).toMatchObject({ reflexive: '203.0.113.50:40000', nat: 'eim' });
    now += 1_000;
    // the NAT lost its mapping and made a new one: b sees it first; STUN's word is now stale
    expect(t.observe('b', OBS_B, NAT_IP, 40777)).toBe(true);
    expect(t.view()).toEqual({ reflexive: '203.0.113.50:40777', nat: 'eim', seen: ['203.0.113.50:40777'] });
  });

  it('a report with its own, longer TTL (a STUN server asked once a minute) outlives peer reports', () => {
    t.observe('stun:x', STUN, NAT_IP, 40000, 150_000);
    now += OBSERVATION_TTL_MS + 1;
    expect(t.view().reflexive).toBe('203.0.113.50:40000');
    t.observe('b', OBS_B, NAT_IP, 40000);
    expect(t.view().nat).toBe('eim');
    now += OBSERVATION_TTL_MS + 1; // b's report expires, STUN's (150 s) still holds
    expect(t.view()).toEqual({ reflexive: '203.0.113.50:40000', nat: 'eim', seen: ['203.0.113.50:40000'] });
    now += 150_000; // and then STUN's too
    expect(t.view()).toEqual({ reflexive: null, nat: 'unknown', seen: [] });
  });

  it('forgets reports older than OBSERVATION_TTL_MS', () => {
    t.observe('b', OBS_B, NAT_IP, 40001);
    now += 5_000;
    t.observe('c', OBS_C, NAT_IP, 40002);
    expect(t.view().nat).toBe('varies');
    now += OBSERVATION_TTL_MS - 5_000;
    expect(t.view().nat).toBe('varies'); // b's report is exactly TTL old: still fresh
    now += 1;
    expect(t.view()).toEqual({ reflexive: '203.0.113.50:40002', nat: 'eim', seen: ['203.0.113.50:40002'] });
    now += 5_000;
    expect(t.view()).toEqual({ reflexive: null, nat: 'unknown', seen: [] });
    // After expiry the same report is news again.
    expect(t.observe('c', OBS_C, NAT_IP, 40002)).toBe(true);
    expect(t.observe('c', OBS_C, NAT_IP, 40002)).toBe(false);
  });

  it('reset() forgets everything; forget() one observer', () => {
    t.observe('b', OBS_B, NAT_IP, 40001);
    now += 1;
    t.observe('c', OBS_C, NAT_IP, 40002);
    t.forget('b');
    expect(t.view()).toEqual({ reflexive: '203.0.113.50:40002', nat: 'eim', seen: ['203.0.113.50:40002'] });
    t.reset();
    expect(t.view()).toEqual({ reflexive: null, nat: 'unknown', seen: [] });
    expect(t.observe('b', OBS_B, NAT_IP, 40001)).toBe(true);
  });

  it('ignores 0:0 (a pong that came through a relay) and any zero half', () => {
    expect(t.observe('b', OBS_B, 0, 0)).toBe(false);
    expect(t.observe('b', OBS_B, NAT_IP, 0)).toBe(false);
    expect(t.observe('b', OBS_B, 0, 40001)).toBe(false);
    expect(t.view()).toEqual({ reflexive: null, nat: 'unknown', seen: [] });
    t.observe('b', OBS_B, NAT_IP, 40001);
    // A relayed pong from the same observer neither replaces nor refreshes its report.
    now += OBSERVATION_TTL_MS;
    expect(t.observe('b', OBS_B, 0, 0)).toBe(false);
    now += 1;
    expect(t.view().nat).toBe('unknown');
  });

  it('observe() is true only when the derived view (address or NAT kind) changes', () => {
    const changes: boolean[] = [];
    const steps: [string, number, number, number][] = [
      ['b', OBS_B, NAT_IP, 40001], // unknown -> eim
      ['b', OBS_B, NAT_IP, 40001], // same
      ['c', OBS_C, NAT_IP, 40001], // agrees
      ['c', OBS_C, NAT_IP, 40002], // varies
      ['c', OBS_C, NAT_IP, 40002], // same
      ['c', OBS_C, NAT_IP, 40001], // agrees again: eim
      ['b', OBS_B, ip('198.51.100.1'), 51820], // b sees our own address, c a mapping: varies
    ];
    for (const [o, oip, a, p] of steps) {
      now += 100;
      changes.push(t.observe(o, oip, a, p));
    }
    expect(changes).toEqual([true, false, false, true, false, true, true]);
  });
});
