// Writes dist/table.txt: each input padded with left-pad, classified with is-number, and
// a duration read by ms. Its output depends only on the source and the three packages.
'use strict';
const fs = require('fs');
const leftPad = require('left-pad');
const isNumber = require('is-number');
const ms = require('ms');

const rows = ['1', 'x', '42'].map((v) => `${leftPad(v, 5, '.')} ${isNumber(v) ? 'number' : 'text'}`);
rows.push(`2h = ${ms('2h')} ms`);
fs.mkdirSync('dist', { recursive: true });
fs.writeFileSync('dist/table.txt', rows.join('\n') + '\n');
