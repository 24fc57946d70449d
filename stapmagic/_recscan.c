/* The compiled fast path of records.RecordParser: one pass over a batch of record lines.
 *
 * scan() accepts a batch only if every line is a whole, well-formed record of the given
 * shape, exactly as records.parse_record (the reference parser) would accept it; anything
 * else (a message line, damage, another shape, an overflowing number) makes it return None
 * and the Python paths take the batch. So it can only ever be faster, never different.
 *
 * Text fields (comm, str and errno arguments) are checked for the bytes text_str() prints
 * and dictionary-encoded here; unescaping the distinct values is left to Python. The GIL is released while scanning,
 * so the thread that reads the pty keeps reading.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The wire: stapmagic/wire.py owns these (RECORD_PREFIX_B, END_TAG, FIELD_SEP, NA_FIELD,
 * SCAN_KIND_CODES); tests/test_wire.py checks them against this file and the module. */
#define RECORD_PREFIX "@@sm1\t"
#define END_TAG "@@"
#define FIELD_SEP '\t'
#define FIELD_SEP_STR "\t"
#define NA_FIELD "?"            /* a nullable number with no value (a faulted member read) */
#define KIND_CODES "iuxse"      /* int, uint, hex, str, errno */
enum { K_INT = 'i', K_UINT = 'u', K_HEX = 'x', K_STR = 's', K_ERRNO = 'e' };
#define RECORD_PREFIX_LEN ((Py_ssize_t)(sizeof RECORD_PREFIX - 1))
_Static_assert(sizeof END_TAG - 1 == 2, "run_scan compares END_TAG byte by byte");
_Static_assert(sizeof NA_FIELD - 1 == 1, "run_scan compares NA_FIELD as one byte");
#define MAX_FIELDS 64

typedef struct {
    const unsigned char *p;     /* start of the value in the batch, or NULL: empty slot */
    Py_ssize_t len;
    uint64_t hash;
    int32_t code;
} slot_t;

typedef struct {
    slot_t *slots;
    size_t mask;                /* capacity - 1, capacity a power of two */
    size_t used;
    const unsigned char **first;    /* code -> the value's first occurrence */
    Py_ssize_t *first_len;
} dict_t;

static int dict_init(dict_t *d, size_t cap) {
    d->slots = calloc(cap, sizeof(slot_t));
    d->first = malloc(cap * sizeof(*d->first));
    d->first_len = malloc(cap * sizeof(*d->first_len));
    d->mask = cap - 1;
    d->used = 0;
    return d->slots && d->first && d->first_len ? 0 : -1;
}

static void dict_free(dict_t *d) {
    free(d->slots);
    free(d->first);
    free(d->first_len);
}

static int dict_grow(dict_t *d) {
    size_t cap = (d->mask + 1) * 2;
    slot_t *slots = calloc(cap, sizeof(slot_t));
    const unsigned char **first = realloc(d->first, cap * sizeof(*first));
    Py_ssize_t *first_len;
    if (!slots || !first) {
        free(slots);
        if (first) d->first = first;
        return -1;
    }
    d->first = first;
    first_len = realloc(d->first_len, cap * sizeof(*first_len));
    if (!first_len) {
        free(slots);
        return -1;
    }
    d->first_len = first_len;
    for (size_t i = 0; i <= d->mask; i++) {
        slot_t s = d->slots[i];
        if (!s.p) continue;
        size_t j = s.hash & (cap - 1);
        while (slots[j].p) j = (j + 1) & (cap - 1);
        slots[j] = s;
    }
    free(d->slots);
    d->slots = slots;
    d->mask = cap - 1;
    return 0;
}

/* The code of value p[0:len] (a new one if it is new); -1 if out of memory. */
static int32_t dict_code(dict_t *d, const unsigned char *p, Py_ssize_t len, uint64_t h) {
    size_t j = h & d->mask;
    for (;;) {
        slot_t *s = &d->slots[j];
        if (!s->p) break;
        if (s->hash == h && s->len == len && memcmp(s->p, p, (size_t)len) == 0)
            return s->code;
        j = (j + 1) & d->mask;
    }
    if ((d->used + 1) * 2 > d->mask + 1) {
        if (dict_grow(d) < 0) return -1;
        j = h & d->mask;
        while (d->slots[j].p) j = (j + 1) & d->mask;
    }
    int32_t code = (int32_t)d->used;
    d->slots[j].p = p;
    d->slots[j].len = len;
    d->slots[j].hash = h;
    d->slots[j].code = code;
    d->first[code] = p;
    d->first_len[code] = len;
    d->used++;
    return code;
}

/* Each parse_* reads one field and the TAB after it; returns the position after the TAB,
 * or NULL if the field is not what parse_record accepts. They need no bounds checks: run_scan
 * only runs on a batch whose last byte is '\n', which stops every loop here. */

static const unsigned char *parse_u64(const unsigned char *p, uint64_t *out) {
    const unsigned char *s = p;
    while (*p == '0') p++;          /* leading zeros: int() takes them too */
    const unsigned char *sig = p;
    uint64_t v = 0;
    /* 19 digits cannot overflow; only a 20th needs a check */
    while ((unsigned)(*p - '0') < 10 && p - sig < 19) {
        v = v * 10 + (unsigned)(*p - '0');
        p++;
    }
    if ((unsigned)(*p - '0') < 10) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10) return NULL;
        v = v * 10 + d;
        p++;
        if ((unsigned)(*p - '0') < 10) return NULL;
    }
    if (p == s || *p != FIELD_SEP) return NULL;
    *out = v;
    return p + 1;
}

static const unsigned char *parse_i64(const unsigned char *p, int64_t *out) {
    int neg = *p == '-';
    uint64_t v;
    p = parse_u64(p + neg, &v);
    if (!p) return NULL;
    if (neg) {
        if (v > (uint64_t)INT64_MAX + 1) return NULL;
        *out = (int64_t)(0 - v);
    } else {
        if (v > (uint64_t)INT64_MAX) return NULL;
        *out = (int64_t)v;
    }
    return p;
}

static const signed char HEXVAL[256] = {
    ['0'] = 1, ['1'] = 2, ['2'] = 3, ['3'] = 4, ['4'] = 5, ['5'] = 6, ['6'] = 7, ['7'] = 8,
    ['8'] = 9, ['9'] = 10, ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15,
    ['f'] = 16, ['A'] = 11, ['B'] = 12, ['C'] = 13, ['D'] = 14, ['E'] = 15, ['F'] = 16,
};   /* digit value + 1; 0: not a hex digit */

static const unsigned char *parse_hex(const unsigned char *p, uint64_t *out) {
    const unsigned char *s = p;
    uint64_t v = 0;
    while (HEXVAL[*p]) {
        if (p - s == 16) return NULL;
        v = (v << 4) | (uint64_t)(HEXVAL[*p] - 1);
        p++;
    }
    if (p == s || *p != FIELD_SEP) return NULL;
    *out = v;
    return p + 1;
}

typedef struct {
    const unsigned char *buf;
    Py_ssize_t len;
    const char *kinds;
    Py_ssize_t nkinds;
    const unsigned char *probe_ok;
    Py_ssize_t nprobes;
    Py_ssize_t nrows;
    int64_t *idx, *time, *pid, *tid, *cpu;
    int32_t *comm;
    void *fields[MAX_FIELDS];
    uint8_t *nulls[MAX_FIELDS];     /* NULL: the field cannot be NA_FIELD; else 1 where it is */
    dict_t dicts[1 + MAX_FIELDS];   /* [0]: comm; [1 + k]: text field k */
    int ndicts;
} job_t;

/* A text field (what text_str() prints raw: 0x20-0x7e, escapes checked later) and its TAB;
 * its code in d goes to *code. NULL if it is not one; *code = -1 if out of memory. */
static const unsigned char *parse_text(const unsigned char *p, dict_t *d, int32_t *code) {
    const unsigned char *c = p;
    uint64_t h = 1469598103934665603ULL;
    while (*p >= 0x20 && *p <= 0x7e) {
        h = (h ^ *p) * 1099511628211ULL;
        p++;
    }
    *code = 0;
    if (*p != FIELD_SEP) return NULL;
    *code = dict_code(d, c, p - c, h);
    return *code < 0 ? NULL : p + 1;
}

/* 0: the whole batch parsed; 1: not clean; -1: out of memory. */
static int run_scan(job_t *j) {
    const unsigned char *p = j->buf, *end = j->buf + j->len;
    Py_ssize_t row = 0;
    if (j->len == 0 || end[-1] != '\n') return 1;
    while (p < end) {
        if (row == j->nrows) return 1;
        if (end - p < RECORD_PREFIX_LEN || memcmp(p, RECORD_PREFIX, RECORD_PREFIX_LEN) != 0)
            return 1;
        p += RECORD_PREFIX_LEN;
        uint64_t u;
        p = parse_u64(p, &u);
        if (!p || u >= (uint64_t)j->nprobes || !j->probe_ok[u]) return 1;
        j->idx[row] = (int64_t)u;
        if (!(p = parse_i64(p, &j->time[row]))) return 1;
        if (!(p = parse_i64(p, &j->pid[row]))) return 1;
        if (!(p = parse_i64(p, &j->tid[row]))) return 1;
        if (!(p = parse_i64(p, &j->cpu[row]))) return 1;
        if (!(p = parse_text(p, &j->dicts[0], &j->comm[row])))
            return j->comm[row] < 0 ? -1 : 1;
        for (Py_ssize_t k = 0; k < j->nkinds; k++) {
            if (j->nulls[k]) {
                int na = p[0] == NA_FIELD[0] && p[1] == FIELD_SEP;
                j->nulls[k][row] = (uint8_t)na;
                if (na) {
                    ((uint64_t *)j->fields[k])[row] = 0;
                    p += 2;
                    continue;
                }
            }
            switch (j->kinds[k]) {
            case K_STR:
            case K_ERRNO:
                p = parse_text(p, &j->dicts[1 + k], &((int32_t *)j->fields[k])[row]);
                if (!p && ((int32_t *)j->fields[k])[row] < 0) return -1;
                break;
            case K_INT:
                p = parse_i64(p, &((int64_t *)j->fields[k])[row]);
                break;
            case K_UINT:
                p = parse_u64(p, &((uint64_t *)j->fields[k])[row]);
                break;
            case K_HEX:
                p = parse_hex(p, &((uint64_t *)j->fields[k])[row]);
                break;
            }
            if (!p) return 1;
        }
        if (p[0] != END_TAG[0] || p[1] != END_TAG[1]) return 1;
        p += 2;
        if (*p == '\r') p++;
        if (*p != '\n') return 1;
        p++;
        row++;
    }
    return row == j->nrows ? 0 : 1;
}

static PyObject *dict_values(const dict_t *d) {
    PyObject *list = PyList_New((Py_ssize_t)d->used);
    for (size_t k = 0; list && k < d->used; k++) {
        PyObject *b = PyBytes_FromStringAndSize((const char *)d->first[k], d->first_len[k]);
        if (!b) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)k, b);
    }
    return list;
}

static int get_out(PyObject *obj, Py_buffer *view, Py_ssize_t nrows, Py_ssize_t itemsize) {
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return -1;
    if (view->len < nrows * itemsize) {
        PyErr_SetString(PyExc_ValueError, "output array too short");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(scan_doc,
"scan(buf, kinds, probe_ok, nrows, idx, time, pid, tid, cpu, comm, fields, nulls=None)\n"
"-> list | None\n\n"
"Parse nrows record lines of one shape into the given int64 (idx, time, pid, tid, cpu),\n"
"int32 (comm codes) and per field 8-byte (i, u, x) or int32 code (s, e) arrays. kinds: one\n"
"of b'iuxse' per field; probe_ok: one byte per probe index, nonzero for the probes of this\n"
"shape. nulls: per field None or a uint8 array: that (i, u, x) field may be NA_FIELD,\n"
"marked 1 there (its value 0). Returns, for comm and then each s/e field, the list of its\n"
"distinct raw values\n"
"(bytes, in code order), or None if any line is not such a record.");

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer bufv, kindv, okv;
    Py_buffer outs[6 + 2 * MAX_FIELDS];
    int nouts = 0;
    Py_ssize_t nrows;
    PyObject *o_idx, *o_time, *o_pid, *o_tid, *o_cpu, *o_comm, *o_fields, *o_nulls = Py_None;
    PyObject *nulls = NULL;
    PyObject *result = NULL;
    job_t j;
    memset(&j, 0, sizeof j);
    if (!PyArg_ParseTuple(args, "y*y*y*nOOOOOOO|O:scan", &bufv, &kindv, &okv, &nrows, &o_idx,
                          &o_time, &o_pid, &o_tid, &o_cpu, &o_comm, &o_fields, &o_nulls))
        return NULL;
    PyObject *fields = PySequence_Fast(o_fields, "fields must be a sequence");
    if (!fields) goto done;
    if (PySequence_Fast_GET_SIZE(fields) != kindv.len || kindv.len > MAX_FIELDS) {
        PyErr_SetString(PyExc_ValueError, "one output array per kind, at most 64");
        goto done;
    }
    for (Py_ssize_t k = 0; k < kindv.len; k++) {
        char c = ((const char *)kindv.buf)[k];
        if (c != K_INT && c != K_UINT && c != K_HEX && c != K_STR && c != K_ERRNO) {
            PyErr_SetString(PyExc_ValueError, "kinds: only b'i', b'u', b'x', b's' and b'e'");
            goto done;
        }
    }
    PyObject *outobj[6] = {o_idx, o_time, o_pid, o_tid, o_cpu, o_comm};
    for (int k = 0; k < 6; k++) {
        if (get_out(outobj[k], &outs[nouts], nrows, k == 5 ? 4 : 8) < 0) goto done;
        nouts++;
    }
    for (Py_ssize_t k = 0; k < kindv.len; k++) {
        char c = ((const char *)kindv.buf)[k];
        Py_ssize_t size = c == K_STR || c == K_ERRNO ? 4 : 8;
        if (get_out(PySequence_Fast_GET_ITEM(fields, k), &outs[nouts], nrows, size) < 0)
            goto done;
        j.fields[k] = outs[nouts].buf;
        nouts++;
    }
    if (o_nulls != Py_None) {
        nulls = PySequence_Fast(o_nulls, "nulls must be a sequence");
        if (!nulls) goto done;
        if (PySequence_Fast_GET_SIZE(nulls) != kindv.len) {
            PyErr_SetString(PyExc_ValueError, "nulls: one entry (None or an array) per kind");
            goto done;
        }
        for (Py_ssize_t k = 0; k < kindv.len; k++) {
            PyObject *o = PySequence_Fast_GET_ITEM(nulls, k);
            char c = ((const char *)kindv.buf)[k];
            if (o == Py_None) continue;
            if (c == K_STR || c == K_ERRNO) {
                PyErr_SetString(PyExc_ValueError, "nulls: only a number field can be NA");
                goto done;
            }
            if (get_out(o, &outs[nouts], nrows, 1) < 0) goto done;
            j.nulls[k] = outs[nouts].buf;
            nouts++;
        }
    }
    j.buf = bufv.buf;
    j.len = bufv.len;
    j.kinds = kindv.buf;
    j.nkinds = kindv.len;
    j.probe_ok = okv.buf;
    j.nprobes = okv.len;
    j.nrows = nrows;
    j.idx = outs[0].buf;
    j.time = outs[1].buf;
    j.pid = outs[2].buf;
    j.tid = outs[3].buf;
    j.cpu = outs[4].buf;
    j.comm = outs[5].buf;
    for (; j.ndicts < 1 + kindv.len; j.ndicts++) {
        if (dict_init(&j.dicts[j.ndicts], 64) < 0) {
            j.ndicts++;
            PyErr_NoMemory();
            goto done;
        }
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = run_scan(&j);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        PyErr_NoMemory();
        goto done;
    }
    if (rc > 0) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    result = PyList_New(0);
    for (int n = 0; result && n < j.ndicts; n++) {
        if (n > 0) {
            char c = j.kinds[n - 1];
            if (c != K_STR && c != K_ERRNO) continue;
        }
        PyObject *values = dict_values(&j.dicts[n]);
        if (!values || PyList_Append(result, values) < 0) Py_CLEAR(result);
        Py_XDECREF(values);
    }
done:
    for (int n = 0; n < j.ndicts; n++) dict_free(&j.dicts[n]);
    for (int k = 0; k < nouts; k++) PyBuffer_Release(&outs[k]);
    Py_XDECREF(fields);
    Py_XDECREF(nulls);
    PyBuffer_Release(&bufv);
    PyBuffer_Release(&kindv);
    PyBuffer_Release(&okv);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_recscan",
    "Compiled fast path of stapmagic.records (see _recscan.c).", -1, methods,
};

PyMODINIT_FUNC PyInit__recscan(void) {
    PyObject *m = PyModule_Create(&module);
    if (m && (PyModule_AddStringConstant(m, "RECORD_PREFIX", RECORD_PREFIX) < 0
              || PyModule_AddStringConstant(m, "END_TAG", END_TAG) < 0
              || PyModule_AddStringConstant(m, "FIELD_SEP", FIELD_SEP_STR) < 0
              || PyModule_AddStringConstant(m, "NA_FIELD", NA_FIELD) < 0
              || PyModule_AddStringConstant(m, "KIND_CODES", KIND_CODES) < 0))
        Py_CLEAR(m);
    return m;
}
