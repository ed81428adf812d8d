/*
 * chat.c: chat templates of the common model families, applied to a conversation.
 *
 * kvpack does not run the Jinja templates that GGUF files carry (tokenizer.chat_template);
 * like llama.cpp it recognizes the family from markers in the template text and writes that
 * family's format itself:
 *
 *   llama3   <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>   (content trimmed)
 *   chatml   <|im_start|>ROLE\nCONTENT<|im_end|>\n                           (Qwen, SmolLM2)
 *   llama2   [INST] <<SYS>>\nSYSTEM\n<</SYS>>\n\nUSER [/INST] ANSWER </s><s>[INST] ...
 *   zephyr   <|ROLE|>\nCONTENT</s>\n                                        (</s>: the EOS text)
 *
 * The text leaves out the BOS token: the tokenizer adds it (kvp_tokenize_ex with
 * KVP_TOKENIZE_ADD_SPECIAL) as the vocabulary asks. Control-token text in the result
 * ("<|eot_id|>", "</s>") is meant to be tokenized with KVP_TOKENIZE_PARSE_SPECIAL.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"
#include "model.h"

/* An output buffer in the manner of snprintf: counts every byte, stores what fits. */
typedef struct kvp_chat_out {
    char *buf;
    size_t cap, n;
} kvp_chat_out;

static void kvp_chat_put(kvp_chat_out *o, const char *s, size_t len) {
    for (size_t i = 0; i < len; i++, o->n++)
        if (o->n + 1 < o->cap) o->buf[o->n] = s[i];
}

static void kvp_chat_puts(kvp_chat_out *o, const char *s) { kvp_chat_put(o, s, strlen(s)); }

/* s without leading and trailing whitespace (Jinja's trim). */
static void kvp_chat_put_trimmed(kvp_chat_out *o, const char *s) {
    size_t len = strlen(s);
    while (len && isspace((unsigned char)*s)) s++, len--;
    while (len && isspace((unsigned char)s[len - 1])) len--;
    kvp_chat_put(o, s, len);
}

/* The text of a special token of the model, or `fallback`. */
static const char *kvp_chat_piece(const kvp_model *m, int id, const char *fallback) {
    const char *p = id >= 0 ? kvp_tokenizer_piece(m->tok, id) : NULL;
    return p && *p ? p : fallback;
}

static void kvp_chat_llama3(kvp_chat_out *o, const kvp_chat_msg *msgs, int n, int add_assistant) {
    for (int i = 0; i < n; i++) {
        kvp_chat_puts(o, "<|start_header_id|>");
        kvp_chat_puts(o, msgs[i].role);
        kvp_chat_puts(o, "<|end_header_id|>\n\n");
        kvp_chat_put_trimmed(o, msgs[i].content);
        kvp_chat_puts(o, "<|eot_id|>");
    }
    if (add_assistant) kvp_chat_puts(o, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static void kvp_chat_chatml(kvp_chat_out *o, const kvp_chat_msg *msgs, int n, int add_assistant) {
    for (int i = 0; i < n; i++) {
        kvp_chat_puts(o, "<|im_start|>");
        kvp_chat_puts(o, msgs[i].role);
        kvp_chat_puts(o, "\n");
        kvp_chat_puts(o, msgs[i].content);
        kvp_chat_puts(o, "<|im_end|>\n");
    }
    if (add_assistant) kvp_chat_puts(o, "<|im_start|>assistant\n");
}

static void kvp_chat_zephyr(const kvp_model *m, kvp_chat_out *o, const kvp_chat_msg *msgs, int n,
                            int add_assistant) {
    const char *eos = kvp_chat_piece(m, kvp_tokenizer_eos(m->tok), "</s>");
    for (int i = 0; i < n; i++) {
        kvp_chat_puts(o, "<|");
        kvp_chat_puts(o, msgs[i].role);
        kvp_chat_puts(o, "|>\n");
        kvp_chat_puts(o, msgs[i].content);
        kvp_chat_puts(o, eos);
        kvp_chat_puts(o, "\n");
    }
    if (add_assistant) kvp_chat_puts(o, "<|assistant|>\n");
}

/* Llama 2: a system message goes inside the first [INST]; every later user turn starts a
 * new sequence (EOS BOS) after the assistant's answer. */
static void kvp_chat_llama2(const kvp_model *m, kvp_chat_out *o, const kvp_chat_msg *msgs, int n) {
    const char *bos = kvp_chat_piece(m, kvp_tokenizer_bos(m->tok), "<s>");
    const char *eos = kvp_chat_piece(m, kvp_tokenizer_eos(m->tok), "</s>");
    const char *system = NULL;
    int turns = 0;
    for (int i = 0; i < n; i++) {
        if (!strcmp(msgs[i].role, "system")) {
            system = msgs[i].content;
        } else if (!strcmp(msgs[i].role, "user")) {
            if (turns++) kvp_chat_puts(o, bos);
            kvp_chat_puts(o, "[INST] ");
            if (system) {
                kvp_chat_puts(o, "<<SYS>>\n");
                kvp_chat_puts(o, system);
                kvp_chat_puts(o, "\n<</SYS>>\n\n");
                system = NULL;
            }
            kvp_chat_put_trimmed(o, msgs[i].content);
            kvp_chat_puts(o, " [/INST]");
        } else {
            kvp_chat_puts(o, " ");
            kvp_chat_put_trimmed(o, msgs[i].content);
            kvp_chat_puts(o, " ");
            kvp_chat_puts(o, eos);
        }
    }
}

/* The family whose markers the template text holds, or NULL. */
static const char *kvp_chat_detect(const char *t, size_t len) {
    static const char *const marks[][2] = {{"<|start_header_id|>", "llama3"}, {"<|im_start|>", "chatml"},
                                           {"<|user|>", "zephyr"}, {"[INST]", "llama2"}};
    for (size_t i = 0; i < KVP_ARRAY_LEN(marks); i++)
        if (memmem(t, len, marks[i][0], strlen(marks[i][0]))) return marks[i][1];
    return NULL;
}

const char *kvp_chat_template_name(const kvp_model *m) {
    kvp_gguf_str s;
    if (!m || !m->gguf || kvp_gguf_get_str(m->gguf, "tokenizer.chat_template", &s) != KVP_OK) return NULL;
    return kvp_chat_detect(s.s, (size_t)s.len);
}

static int kvp_chat_check(const kvp_chat_msg *msgs, int n) {
    for (int i = 0; i < n; i++)
        if (!msgs[i].role || !msgs[i].content || !*msgs[i].role)
            return kvp_seterr(KVP_EINVAL, "chat message %d has no role or no content", i);
    return KVP_OK;
}

int kvp_chat_format(const kvp_model *m, const char *tmpl, const kvp_chat_msg *msgs, int n, int add_assistant,
                    char *buf, size_t cap) {
    if (!m || n < 0 || (!msgs && n > 0) || (!buf && cap > 0)) return kvp_seterr(KVP_EINVAL, "kvp_chat_format: bad arguments");
    KVP_TRY(kvp_chat_check(msgs, n));
    const char *name = tmpl && *tmpl && strcmp(tmpl, "auto") ? tmpl : kvp_chat_template_name(m);
    if (!name)
        return kvp_seterr(KVP_EUNSUPPORTED, "the model has no chat template kvpack recognizes: choose one of "
                          "llama3, chatml, llama2, zephyr");
    kvp_chat_out o = {buf, cap, 0};
    if (!strcmp(name, "llama3")) kvp_chat_llama3(&o, msgs, n, add_assistant);
    else if (!strcmp(name, "chatml")) kvp_chat_chatml(&o, msgs, n, add_assistant);
    else if (!strcmp(name, "zephyr")) kvp_chat_zephyr(m, &o, msgs, n, add_assistant);
    else if (!strcmp(name, "llama2")) kvp_chat_llama2(m, &o, msgs, n);
    else return kvp_seterr(KVP_EUNSUPPORTED, "chat template '%s' is unknown (known: llama3, chatml, llama2, zephyr)", name);
    if (cap > 0) buf[KVP_MIN(o.n, cap - 1)] = 0;
    if (o.n > (size_t)INT32_MAX) return kvp_seterr(KVP_ERANGE, "the conversation is too long");
    return (int)o.n;
}
