/**
 * V8 settings for a packet-forwarding process; imported first by main.ts.
 *
 * V8 optimises a function once it has run "enough" (an interrupt budget of
 * about 132 KB of bytecode). A relay that forwards an occasional ping
 * never gets there, so each cell of interactive traffic ran in the
 * interpreter or baseline code: about 0.1 ms more per hop, measured with
 * one ping every 50 ms through a 3-hop circuit (RTT median 1.44 ms before,
 * 1.08 ms after). A small budget lets the cell path reach optimised code
 * after a few cells; the price is some compilation at start.
 */
import v8 from 'node:v8';

v8.setFlagsFromString('--interrupt-budget=2000');
