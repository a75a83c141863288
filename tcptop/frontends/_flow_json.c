/* A Flow's compact JSON text in C, for `tcptop --json`: json.JSONEncoder costs ~13 us a flow
 * here (the dict of 45 fields, then the encoder), and a poll of a busy host, a churn of
 * 10,000 connections a second or the first snapshot of 100,000 flows changes that many.
 *
 * pieces(flow, fields) writes exactly what json.JSONEncoder(separators=(",", ":")) writes
 * for Flow.to_dict() (strings through json's own c_encode_basestring_ascii, numbers through
 * their reprs, NaN/Infinity as json writes them, `latency` left out when None), split around
 * the value of duration_s, which the caller writes per snapshot. A value it does not know
 * (a key that is not a str, a type json would need a default for) returns None: the caller
 * encodes that flow in Python. tests/unit/test_json_encoder.py compares both.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <structmember.h>

struct buf {
	char *p;
	Py_ssize_t len, cap;
};

static PyObject *encode_str;	/* json.encoder.c_encode_basestring_ascii */
static PyObject *key_cache;	/* str -> its encoded bytes, for keys (a few hundred names) */

static int put(struct buf *b, const char *s, Py_ssize_t n)
{
	if (b->len + n > b->cap) {
		Py_ssize_t cap = (b->cap ? b->cap : 1024);
		while (cap < b->len + n)
			cap *= 2;
		char *p = PyMem_Realloc(b->p, cap);
		if (!p) {
			PyErr_NoMemory();
			return -1;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	return 0;
}

#define PUT(b, lit) put(b, lit, sizeof(lit) - 1)

/* An ASCII str (a repr or an encoded string) appended, and released; anything else is an
 * error (the texts built here are ASCII by construction). */
static int put_ascii(struct buf *b, PyObject *s)
{
	if (!s)
		return -1;
	int rc = -1;
	if (!PyUnicode_Check(s) || !PyUnicode_IS_ASCII(s))
		PyErr_SetString(PyExc_ValueError, "a JSON text that is not ASCII");
	else
		rc = put(b, (const char *)PyUnicode_1BYTE_DATA(s), PyUnicode_GET_LENGTH(s));
	Py_DECREF(s);
	return rc;
}

/* A str as json writes it (ensure_ascii): written directly when it is ASCII with nothing to
 * escape, else through json's own encoder. */
static int put_str(struct buf *b, PyObject *s)
{
	if (PyUnicode_IS_ASCII(s)) {
		Py_ssize_t n = PyUnicode_GET_LENGTH(s);
		const unsigned char *p = PyUnicode_1BYTE_DATA(s);
		Py_ssize_t i = 0;
		while (i < n && p[i] >= 0x20 && p[i] != '"' && p[i] != '\\' && p[i] < 0x7f)
			i++;
		if (i == n)
			return PUT(b, "\"") < 0 || put(b, (const char *)p, n) < 0 || PUT(b, "\"") < 0 ? -1 : 0;
	}
	return put_ascii(b, PyObject_CallOneArg(encode_str, s));
}

static int put_key(struct buf *b, PyObject *k)
{
	PyObject *enc = PyDict_GetItemWithError(key_cache, k);
	if (enc)
		return put(b, PyBytes_AS_STRING(enc), PyBytes_GET_SIZE(enc));
	if (PyErr_Occurred())
		return -1;
	struct buf kb = {0};
	int rc = put_str(&kb, k);
	if (rc == 0 && PUT(&kb, ":") == 0) {
		if (PyDict_GET_SIZE(key_cache) < 4096) {
			PyObject *bytes = PyBytes_FromStringAndSize(kb.p, kb.len);
			if (!bytes || PyDict_SetItem(key_cache, k, bytes) < 0)
				rc = -1;
			Py_XDECREF(bytes);
		}
		if (rc == 0)
			rc = put(b, kb.p, kb.len);
	} else {
		rc = -1;
	}
	PyMem_Free(kb.p);
	return rc;
}

static int put_u64(struct buf *b, unsigned long long u, int negative)
{
	char tmp[24];
	int i = sizeof(tmp);
	do {
		tmp[--i] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (negative)
		tmp[--i] = '-';
	return put(b, tmp + i, sizeof(tmp) - i);
}

static int put_int(struct buf *b, PyObject *v)
{
	int overflow;
	long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
	if (overflow > 0) {
		unsigned long long u = PyLong_AsUnsignedLongLong(v);
		if (!PyErr_Occurred())
			return put_u64(b, u, 0);
		PyErr_Clear();
	} else if (!overflow) {
		if (x == -1 && PyErr_Occurred())
			return -1;
		return x < 0 ? put_u64(b, 0ULL - (unsigned long long)x, 1) : put_u64(b, (unsigned long long)x, 0);
	}
	return put_ascii(b, PyLong_Type.tp_repr(v));
}

/* repr(x) without dtoa's shortest-digits search, for 1e-4 <= |x| < 2**32 when x is the double
 * nearest to some number of 6 decimals (timestamps to the microsecond, ages to the
 * millisecond): 0 when it does not apply. Why it is repr's text: m / 1e6 is divided exactly
 * rounded, so `c == x` says the 6-decimal text of m reads back as x; below 2**32 half an ulp
 * is under 0.5e-6, so no other text of at most 6 decimals reads back as x, and the shortest
 * one (repr's) is that text without its trailing zeros. Two such floats in a flow's text
 * took ~1.3 of its ~4 us through dtoa. */
static int put_float_fast(struct buf *b, double x)
{
	double ax = fabs(x);
	if (!(ax >= 1e-4 && ax < 4294967296.0))
		return 0;
	long long m = llround(ax * 1e6);
	if ((double)m / 1e6 != ax)
		return 0;
	char tmp[32];
	int n = 0;
	if (x < 0)
		tmp[n++] = '-';
	long long ip = m / 1000000, frac = m % 1000000;
	char digits[24];
	int k = 0;
	do {
		digits[k++] = (char)('0' + ip % 10);
		ip /= 10;
	} while (ip);
	while (k)
		tmp[n++] = digits[--k];
	tmp[n++] = '.';
	int places = 6;
	while (places > 1 && frac % 10 == 0) {
		frac /= 10;
		places--;
	}
	for (int i = places - 1; i >= 0; i--) {
		tmp[n + i] = (char)('0' + frac % 10);
		frac /= 10;
	}
	n += places;
	return put(b, tmp, n) < 0 ? -1 : 1;
}

static int put_float(struct buf *b, double x)
{
	if (isnan(x))
		return PUT(b, "NaN");
	if (isinf(x))
		return x > 0 ? PUT(b, "Infinity") : PUT(b, "-Infinity");
	int fast = put_float_fast(b, x);
	if (fast)
		return fast < 0 ? -1 : 0;
	/* as float.__repr__ writes it */
	char *s = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
	if (!s)
		return -1;
	int rc = put(b, s, strlen(s));
	PyMem_Free(s);
	return rc;
}

/* 1: written; 0: a value this encoder leaves to Python; -1: error. */
static int value(struct buf *b, PyObject *v, int depth);

static int sequence(struct buf *b, PyObject *v, int depth)
{
	PyObject *seq = PySequence_Fast(v, "");
	if (!seq)
		return -1;
	Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
	int rc = PUT(b, "[") < 0 ? -1 : 1;
	for (Py_ssize_t i = 0; i < n && rc > 0; i++)
		rc = i && PUT(b, ",") < 0 ? -1 : value(b, PySequence_Fast_GET_ITEM(seq, i), depth + 1);
	Py_DECREF(seq);
	if (rc > 0)
		rc = PUT(b, "]") < 0 ? -1 : 1;
	return rc;
}

static int mapping(struct buf *b, PyObject *d, int depth)
{
	PyObject *k, *v;
	Py_ssize_t pos = 0;
	int first = 1, rc = 1;

	if (PUT(b, "{") < 0)
		return -1;
	while (PyDict_Next(d, &pos, &k, &v)) {
		if (!PyUnicode_CheckExact(k))
			return 0;
		if ((!first && PUT(b, ",") < 0) || put_key(b, k) < 0)
			return -1;
		first = 0;
		if ((rc = value(b, v, depth + 1)) <= 0)
			return rc;
	}
	return PUT(b, "}") < 0 ? -1 : 1;
}

static int value(struct buf *b, PyObject *v, int depth)
{
	if (depth > 32)
		return 0;
	if (v == Py_None)
		return PUT(b, "null") < 0 ? -1 : 1;
	if (v == Py_True)
		return PUT(b, "true") < 0 ? -1 : 1;
	if (v == Py_False)
		return PUT(b, "false") < 0 ? -1 : 1;
	if (PyUnicode_CheckExact(v))
		return put_str(b, v) < 0 ? -1 : 1;
	if (PyLong_CheckExact(v))
		return put_int(b, v) < 0 ? -1 : 1;
	if (PyFloat_CheckExact(v))
		return put_float(b, PyFloat_AS_DOUBLE(v)) < 0 ? -1 : 1;
	if (PyTuple_CheckExact(v) || PyList_CheckExact(v))
		return sequence(b, v, depth);
	if (PyDict_CheckExact(v))
		return mapping(b, v, depth);
	return 0;
}

/* How pieces() reads one class of flow: each field's slot and encoded key, found once per
 * (class, field list, duration field) rather than by attribute lookup and key cache for
 * every field of every flow (~2 us of a flow's ~5 here). */
#define MAX_FIELDS 64
enum { F_PLAIN, F_LATENCY, F_DROPS, F_DURATION };
static struct {
	PyTypeObject *type;
	PyObject *fields, *duration;
	Py_ssize_t n;
	Py_ssize_t offset[MAX_FIELDS];	/* of the slot; -1: read by attribute */
	PyObject *key[MAX_FIELDS];	/* b'"name":' */
	char kind[MAX_FIELDS];
} L;

static int layout_for(PyTypeObject *type, PyObject *fields, PyObject *duration)
{
	if (L.type == type && L.fields == fields && L.duration == duration)
		return 0;
	Py_ssize_t n = PyTuple_GET_SIZE(fields);
	if (n > MAX_FIELDS) {
		PyErr_SetString(PyExc_ValueError, "pieces: too many fields");
		return -1;
	}
	for (Py_ssize_t i = 0; i < L.n; i++)
		Py_CLEAR(L.key[i]);
	Py_CLEAR(L.type);
	Py_CLEAR(L.fields);
	Py_CLEAR(L.duration);
	L.n = 0;
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *name = PyTuple_GET_ITEM(fields, i);
		if (!PyUnicode_Check(name)) {
			PyErr_SetString(PyExc_TypeError, "pieces: field names are str");
			goto fail;
		}
		struct buf kb = {0};
		if (put_str(&kb, name) < 0 || PUT(&kb, ":") < 0) {
			PyMem_Free(kb.p);
			goto fail;
		}
		L.key[i] = PyBytes_FromStringAndSize(kb.p, kb.len);
		PyMem_Free(kb.p);
		if (!L.key[i])
			goto fail;
		L.n = i + 1;
		L.kind[i] = PyUnicode_Compare(name, duration) == 0 ? F_DURATION
			    : PyUnicode_CompareWithASCIIString(name, "latency") == 0 ? F_LATENCY
			    : PyUnicode_CompareWithASCIIString(name, "drops") == 0 ? F_DROPS : F_PLAIN;
		L.offset[i] = -1;
		PyObject *d = PyObject_GetAttr((PyObject *)type, name);
		if (!d) {
			PyErr_Clear();
			continue;
		}
		if (PyObject_TypeCheck(d, &PyMemberDescr_Type) &&
		    ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX &&
		    ((PyMemberDescrObject *)d)->d_common.d_type == type)
			L.offset[i] = ((PyMemberDescrObject *)d)->d_member->offset;
		Py_DECREF(d);
	}
	L.type = (PyTypeObject *)Py_NewRef(type);
	L.fields = Py_NewRef(fields);
	L.duration = Py_NewRef(duration);
	return 0;
fail:
	for (Py_ssize_t i = 0; i < L.n; i++)
		Py_CLEAR(L.key[i]);
	L.n = 0;
	return -1;
}

/* Field i of a flow (a new reference), from its slot when it has one. */
static PyObject *field(PyObject *flow, Py_ssize_t i, PyObject *name)
{
	if (L.offset[i] < 0)
		return PyObject_GetAttr(flow, name);
	PyObject *v = *(PyObject **)((char *)flow + L.offset[i]);
	if (!v) {
		PyErr_Format(PyExc_AttributeError, "%U", name);
		return NULL;
	}
	return Py_NewRef(v);
}

static int put_age(struct buf *b, PyObject *f, double ts);

/* A flow's text appended to `b`: its duration's value as of `ts` (at_ts) or, not at_ts, left
 * out and its place in `*cut`. 1: written; 0: a value this encoder leaves to Python (`b` is
 * then back at its length before); -1: error. `fields`: the Flow's field names in order. */
static int flow_text(struct buf *b, PyObject *flow, PyObject *fields, PyObject *duration, int at_ts, double ts,
		     Py_ssize_t *cut)
{
	Py_ssize_t start = b->len;
	int rc = 1;

	if (layout_for(Py_TYPE(flow), fields, duration) < 0 || PUT(b, "{") < 0)
		return -1;
	Py_ssize_t n = PyTuple_GET_SIZE(fields);
	int first = 1;
	*cut = -1;
	for (Py_ssize_t i = 0; i < n && rc > 0; i++) {
		PyObject *name = PyTuple_GET_ITEM(fields, i);
		PyObject *v = field(flow, i, name);
		if (!v)
			return -1;
		if (v == Py_None && L.kind[i] == F_LATENCY) {
			Py_DECREF(v);
			continue;
		}
		if ((!first && PUT(b, ",") < 0) ||
		    put(b, PyBytes_AS_STRING(L.key[i]), PyBytes_GET_SIZE(L.key[i])) < 0) {
			Py_DECREF(v);
			return -1;
		}
		first = 0;
		if (L.kind[i] == F_DURATION) {
			*cut = b->len;
			Py_DECREF(v);
			if (at_ts && put_age(b, flow, ts) < 0)
				return -1;
			continue;
		}
		if (L.kind[i] == F_DROPS && !PyDict_CheckExact(v)) {
			/* a read-only mapping, written as the dict to_dict() copies it to (most flows
			 * have none: no copy for those) */
			Py_ssize_t len = PyObject_Length(v);
			if (len < 0) {
				Py_DECREF(v);
				return -1;
			}
			if (len == 0) {
				Py_DECREF(v);
				if (PUT(b, "{}") < 0)
					return -1;
				continue;
			}
			PyObject *d = PyDict_New();
			if (!d || PyDict_Update(d, v) < 0) {
				Py_XDECREF(d);
				Py_DECREF(v);
				return -1;
			}
			Py_SETREF(v, d);
		}
		rc = value(b, v, 0);
		Py_DECREF(v);
		if (rc < 0)
			return -1;
	}
	if (rc == 0 || *cut < 0) {
		b->len = start;
		return 0;
	}
	return PUT(b, "}") < 0 ? -1 : 1;
}

/* (text of b from `start` up to `cut`, text from `cut` on): a flow's two pieces. */
static PyObject *head_tail(struct buf *b, Py_ssize_t start, Py_ssize_t cut)
{
	PyObject *out = NULL, *head = PyUnicode_DecodeASCII(b->p + start, cut - start, NULL);
	PyObject *tail = head ? PyUnicode_DecodeASCII(b->p + cut, b->len - cut, NULL) : NULL;
	if (head && tail)
		out = PyTuple_Pack(2, head, tail);
	Py_XDECREF(head);
	Py_XDECREF(tail);
	return out;
}

/* pieces(flow, fields, duration_field) -> (text up to the duration's value, text after it),
 * or None when a value is left to Python. `fields`: the Flow's field names in order. */
static PyObject *pieces(PyObject *self, PyObject *args)
{
	PyObject *flow, *fields, *duration, *out = NULL;
	struct buf b = {0};
	Py_ssize_t cut;

	if (!PyArg_ParseTuple(args, "OO!U", &flow, &PyTuple_Type, &fields, &duration))
		return NULL;
	int rc = flow_text(&b, flow, fields, duration, 0, 0.0, &cut);
	if (rc == 0)
		out = Py_NewRef(Py_None);
	else if (rc > 0)
		out = head_tail(&b, 0, cut);
	PyMem_Free(b.p);
	return out;
}

/* A flow's id (a new reference), by the attribute's interned name. */
static PyObject *id_of(PyObject *f)
{
	static PyObject *name;
	if (!name && !(name = PyUnicode_InternFromString("id")))
		return NULL;
	return PyObject_GetAttr(f, name);
}

/* delta(shown, flows) -> (changed, gone): the flows that are not the very object `shown` has
 * for their id, and the ids `shown` has that `flows` no longer lists; `shown` (id -> Flow) is
 * brought up to date. One pass over 100,000 flows in C: --changes on an idle host writes a few
 * hundred bytes a line, and finding them took ~100 ms of Python a line here. */
static PyObject *delta(PyObject *self, PyObject *args)
{
	PyObject *shown, *flows, *seq, *changed, *gone = NULL, *ids = NULL, *out = NULL;

	if (!PyArg_ParseTuple(args, "O!O", &PyDict_Type, &shown, &flows))
		return NULL;
	if (!(seq = PySequence_Fast(flows, "flows: a sequence")))
		return NULL;
	if (!(changed = PyList_New(0)))
		goto done;
	Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), before = PyDict_GET_SIZE(shown), matched = 0;
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *f = PySequence_Fast_GET_ITEM(seq, i);
		PyObject *id = id_of(f);
		if (!id)
			goto done;
		PyObject *prev = PyDict_GetItemWithError(shown, id);
		int rc = 0;
		if (!prev && PyErr_Occurred())
			rc = -1;
		else if (prev != f)
			rc = (PyList_Append(changed, f) < 0 || PyDict_SetItem(shown, id, f) < 0) ? -1 : 0;
		matched += prev != NULL;
		Py_DECREF(id);
		if (rc < 0)
			goto done;
	}
	if (!(gone = PyList_New(0)))
		goto done;
	if (matched != before) {  /* some ids went: those not listed now */
		if (!(ids = PySet_New(NULL)))
			goto done;
		for (Py_ssize_t i = 0; i < n; i++) {
			PyObject *id = id_of(PySequence_Fast_GET_ITEM(seq, i));
			int rc = id ? PySet_Add(ids, id) : -1;
			Py_XDECREF(id);
			if (rc < 0)
				goto done;
		}
		PyObject *k, *v;
		Py_ssize_t pos = 0;
		while (PyDict_Next(shown, &pos, &k, &v)) {
			int in = PySet_Contains(ids, k);
			if (in < 0 || (!in && PyList_Append(gone, k) < 0))
				goto done;
		}
		for (Py_ssize_t i = 0; i < PyList_GET_SIZE(gone); i++)
			if (PyDict_DelItem(shown, PyList_GET_ITEM(gone, i)) < 0)
				goto done;
	}
	out = PyTuple_Pack(2, changed, gone);
done:
	Py_XDECREF(ids);
	Py_XDECREF(gone);
	Py_XDECREF(changed);
	Py_DECREF(seq);
	return out;
}

/* follow(shown, changed, gone, keep) -> (flows for the line, ids gone): a --changes line from
 * the source's own changes. A changed flow keep() refuses (keep None: none) is gone; of the
 * rest, those that are not the very object `shown` has for their id; of the ids gone, those
 * `shown` had. `shown` is brought up to date. Under a churn of connections ~20,000 flows a
 * line change: this loop in Python cost ~45 ms a line, the filter's own calls aside. */
static PyObject *follow(PyObject *self, PyObject *args)
{
	PyObject *shown, *changed, *gone, *keep, *cseq, *gseq = NULL, *out = NULL, *refused = NULL, *left = NULL;

	if (!PyArg_ParseTuple(args, "O!OOO", &PyDict_Type, &shown, &changed, &gone, &keep))
		return NULL;
	if (!(cseq = PySequence_Fast(changed, "changed: a sequence")))
		return NULL;
	if (!(gseq = PySequence_Fast(gone, "gone: a sequence")) || !(out = PyList_New(0))
	    || !(refused = PyList_New(0)) || !(left = PyList_New(0)))
		goto fail;
	for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(cseq); i++) {
		PyObject *f = PySequence_Fast_GET_ITEM(cseq, i), *id = id_of(f);
		int rc = id ? 0 : -1, kept = 1;
		if (!rc && keep != Py_None) {
			PyObject *answer = PyObject_CallOneArg(keep, f);
			kept = answer ? PyObject_IsTrue(answer) : -1;
			Py_XDECREF(answer);
			if (kept < 0)
				rc = -1;
			else if (!kept)
				rc = PyList_Append(refused, id);
		}
		if (!rc && kept) {
			PyObject *prev = PyDict_GetItemWithError(shown, id);
			if (!prev && PyErr_Occurred())
				rc = -1;
			else if (prev != f)
				rc = (PyDict_SetItem(shown, id, f) < 0 || PyList_Append(out, f) < 0) ? -1 : 0;
		}
		Py_XDECREF(id);
		if (rc < 0)
			goto fail;
	}
	for (int pass = 0; pass < 2; pass++) {	/* the source's gone ids, then the refused ones */
		PyObject *ids = pass ? refused : gseq;
		Py_ssize_t n = pass ? PyList_GET_SIZE(refused) : PySequence_Fast_GET_SIZE(gseq);
		for (Py_ssize_t i = 0; i < n; i++) {
			PyObject *id = pass ? PyList_GET_ITEM(ids, i) : PySequence_Fast_GET_ITEM(ids, i);
			PyObject *prev = PyDict_GetItemWithError(shown, id);
			if (!prev && PyErr_Occurred())
				goto fail;
			if (prev && (PyList_Append(left, id) < 0 || PyDict_DelItem(shown, id) < 0))
				goto fail;
		}
	}
	PyObject *pair = PyTuple_Pack(2, out, left);
	Py_DECREF(out);
	Py_DECREF(left);
	Py_DECREF(refused);
	Py_DECREF(gseq);
	Py_DECREF(cseq);
	return pair;
fail:
	Py_XDECREF(out);
	Py_XDECREF(left);
	Py_XDECREF(refused);
	Py_XDECREF(gseq);
	Py_DECREF(cseq);
	return NULL;
}

/* sieve(flows, seen, keep) -> [flows keep() keeps]: keep() is asked only about a flow that is
 * not the very object `seen` (id -> (flow, answer)) has for its id, and `seen` is updated. Under
 * a churn of connections this loop over every listed flow (~90,000) cost ~80 ms of Python a line. */
static PyObject *sieve(PyObject *self, PyObject *args)
{
	PyObject *flows, *seen, *keep, *seq, *kept = NULL;

	if (!PyArg_ParseTuple(args, "OO!O", &flows, &PyDict_Type, &seen, &keep))
		return NULL;
	if (!(seq = PySequence_Fast(flows, "flows: a sequence")))
		return NULL;
	if (!(kept = PyList_New(0)))
		goto done;
	Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *f = PySequence_Fast_GET_ITEM(seq, i);
		PyObject *id = id_of(f), *answer = NULL;
		if (!id)
			goto fail;
		PyObject *e = PyDict_GetItemWithError(seen, id);
		if (e && PyTuple_CheckExact(e) && PyTuple_GET_SIZE(e) == 2 && PyTuple_GET_ITEM(e, 0) == f) {
			answer = Py_NewRef(PyTuple_GET_ITEM(e, 1));
		} else if (!PyErr_Occurred()) {
			PyObject *got = PyObject_CallOneArg(keep, f);
			int truth = got ? PyObject_IsTrue(got) : -1;
			Py_XDECREF(got);
			if (truth >= 0) {
				answer = Py_NewRef(truth ? Py_True : Py_False);
				PyObject *entry = PyTuple_Pack(2, f, answer);
				if (!entry || PyDict_SetItem(seen, id, entry) < 0)
					Py_CLEAR(answer);
				Py_XDECREF(entry);
			}
		}
		Py_DECREF(id);
		if (!answer)
			goto fail;
		int rc = answer == Py_True ? PyList_Append(kept, f) : 0;
		Py_DECREF(answer);
		if (rc < 0)
			goto fail;
	}
	goto done;
fail:
	Py_CLEAR(kept);
done:
	Py_DECREF(seq);
	return kept;
}

/* round(x, 3) as float.__round__ computes it: the correctly rounded 3-decimal string of x,
 * read back (both through the same dtoa Python uses). The shortcut, for 0 <= x < 2**32 away
 * from a tie: x * 1000 is within half an ulp of the exact product, so when its fraction is
 * more than two ulps from one half the exact product rounds to the same integer m, and m / 1000
 * (both exact, divided correctly rounded) is the double nearest the decimal Python reads
 * back. The string round trip was ~10 % of writing a flow. */
static double round3(double x)
{
	if (x >= 0.0 && x < 4294967296.0) {
		double y = x * 1000.0, fl = floor(y);
		if (fabs(y - fl - 0.5) > 2.0 * (nextafter(y, INFINITY) - y))
			return (y - fl > 0.5 ? fl + 1.0 : fl) / 1000.0;
	}
	char *s = PyOS_double_to_string(x, 'f', 3, 0, NULL);
	if (!s)
		return -1.0;
	double r = PyOS_string_to_double(s, NULL, NULL);
	PyMem_Free(s);
	return r;
}

static int float_attr(PyObject *f, PyObject *name, double *out, PyObject **obj)
{
	PyObject *v = PyObject_GetAttr(f, name);
	if (!v)
		return -1;
	*out = PyFloat_AsDouble(v);
	if (obj)
		*obj = v;
	else
		Py_DECREF(v);
	return *out == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* A flow's age as Flow.age_s(ts) computes it, rounded as round(age, 3) and written as repr()
 * writes it. A value that is not a float (a replayed integer duration) is left to Python. */
static int put_age(struct buf *b, PyObject *f, double ts)
{
	static PyObject *est_name, *closed_name, *dur_name, *round_fn, *three;
	if (!est_name) {
		est_name = PyUnicode_InternFromString("established_ts");
		closed_name = PyUnicode_InternFromString("closed_ts");
		dur_name = PyUnicode_InternFromString("duration_s");
		PyObject *builtins = PyEval_GetBuiltins();
		round_fn = builtins ? Py_XNewRef(PyDict_GetItemString(builtins, "round")) : NULL;
		three = PyLong_FromLong(3);
		if (!est_name || !closed_name || !dur_name || !round_fn || !three)
			return -1;
	}
	double est, closed, age;
	PyObject *dur = NULL;
	if (float_attr(f, est_name, &est, NULL) < 0)
		return -1;
	if (est == 0.0) {
		dur = PyObject_GetAttr(f, dur_name);
		if (!dur)
			return -1;
		if (!PyFloat_CheckExact(dur)) {  /* round(int, 3) is the int itself: as Python writes it */
			PyObject *r = PyObject_CallFunctionObjArgs(round_fn, dur, three, NULL);
			Py_DECREF(dur);
			if (!r)
				return -1;
			PyObject *text = PyObject_Repr(r);
			Py_DECREF(r);
			return put_ascii(b, text);
		}
		age = PyFloat_AS_DOUBLE(dur);
		Py_DECREF(dur);
	} else {
		if (float_attr(f, closed_name, &closed, NULL) < 0)
			return -1;
		double end = closed != 0.0 ? closed : ts;
		age = end - est > 0.0 ? end - est : 0.0;  /* max(0.0, end - est) */
	}
	if (!isfinite(age))
		return put_ascii(b, PyObject_Repr(PyFloat_FromDouble(age)));
	double r = round3(age);
	if (r == -1.0 && PyErr_Occurred())
		return -1;
	return put_float(b, r);
}

/* A flow's entry (flow, text before its age, text after) made by `pieces_fn(flow)`, for a
 * flow whose values C leaves to Python. A new reference. */
static PyObject *python_entry(PyObject *f, PyObject *pieces_fn)
{
	PyObject *out = PyObject_CallOneArg(pieces_fn, f);
	if (out && !(PyTuple_CheckExact(out) && PyTuple_GET_SIZE(out) == 3 && PyUnicode_Check(PyTuple_GET_ITEM(out, 1)) &&
		     PyUnicode_Check(PyTuple_GET_ITEM(out, 2)))) {
		Py_CLEAR(out);
		PyErr_SetString(PyExc_TypeError, "pieces(flow) must give (flow, head, tail)");
	}
	return out;
}

/* One flow's entry of flows_text's cache: from C, or from Python where C leaves a value to
 * it. A new reference. */
static PyObject *entry_of(PyObject *f, PyObject *fields, PyObject *duration, PyObject *pieces_fn)
{
	struct buf b = {0};
	Py_ssize_t cut;
	PyObject *out = NULL;
	int rc = flow_text(&b, f, fields, duration, 0, 0.0, &cut);
	if (rc > 0) {
		PyObject *ht = head_tail(&b, 0, cut);
		if (ht)
			out = PyTuple_Pack(3, f, PyTuple_GET_ITEM(ht, 0), PyTuple_GET_ITEM(ht, 1));
		Py_XDECREF(ht);
	} else if (rc == 0) {
		out = python_entry(f, pieces_fn);
	}
	PyMem_Free(b.p);
	return out;
}

static int put_entry(struct buf *b, PyObject *f, PyObject *entry, double ts)
{
	if (put_ascii(b, Py_NewRef(PyTuple_GET_ITEM(entry, 1))) < 0 || put_age(b, f, ts) < 0)
		return -1;
	return put_ascii(b, Py_NewRef(PyTuple_GET_ITEM(entry, 2)));
}

/* flows_text(flows, cache, ts, pieces, fields, duration) -> (text, fresh): JsonEncoder._flows_text
 * in C. `cache` and `fresh`: id -> (flow, text before its age, text after), the text of a flow
 * the cache has as this very object reused. With cache None (a --changes line, whose flows all
 * changed) each flow is written straight into the line, its age in place, and fresh is None:
 * under a churn of connections ~20,000 flows a line, a cache entry and the call out to make it
 * were a third of the line's cost. `pieces(flow)` makes an entry where C leaves a value to
 * Python; `fields` and `duration` as for pieces(). */
static PyObject *flows_text(PyObject *self, PyObject *args)
{
	PyObject *flows, *cache, *pieces_fn, *fields, *duration, *seq, *fresh = NULL, *out = NULL;
	double ts;
	struct buf b = {0};

	if (!PyArg_ParseTuple(args, "OOdOO!U", &flows, &cache, &ts, &pieces_fn, &PyTuple_Type, &fields, &duration))
		return NULL;
	if (cache != Py_None && !PyDict_Check(cache))
		return PyErr_Format(PyExc_TypeError, "flows_text: cache is a dict or None");
	if (!(seq = PySequence_Fast(flows, "flows: a sequence")))
		return NULL;
	if (cache != Py_None && !(fresh = PyDict_New()))
		goto done;
	Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
	if (n && !(b.p = PyMem_Malloc(b.cap = n * 900))) {  /* a flow's text is ~800 bytes: no regrowth */
		PyErr_NoMemory();
		goto done;
	}
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *f = PySequence_Fast_GET_ITEM(seq, i), *entry = NULL;
		Py_ssize_t cut;
		if (i && PUT(&b, ",") < 0)
			goto done;
		if (!fresh) {  /* no cache: straight into the line */
			int rc = flow_text(&b, f, fields, duration, 1, ts, &cut);
			if (rc < 0)
				goto done;
			if (rc > 0)
				continue;
			if (!(entry = python_entry(f, pieces_fn)))  /* C has just left it to Python */
				goto done;
		} else {
			PyObject *id = id_of(f);
			if (!id)
				goto done;
			entry = PyDict_GetItemWithError(cache, id);
			if (entry && PyTuple_CheckExact(entry) && PyTuple_GET_SIZE(entry) == 3 && PyTuple_GET_ITEM(entry, 0) == f)
				Py_INCREF(entry);
			else
				entry = PyErr_Occurred() ? NULL : entry_of(f, fields, duration, pieces_fn);
			int rc = entry ? PyDict_SetItem(fresh, id, entry) : -1;
			Py_DECREF(id);
			if (rc < 0) {
				Py_XDECREF(entry);
				goto done;
			}
		}
		int rc = put_entry(&b, f, entry, ts);
		Py_DECREF(entry);
		if (rc < 0)
			goto done;
	}
	PyObject *text = PyUnicode_New(b.len, 127);  /* ASCII by construction: copied, not checked */
	if (text) {
		if (b.len)
			memcpy(PyUnicode_1BYTE_DATA(text), b.p, b.len);
		out = PyTuple_Pack(2, text, fresh ? fresh : Py_None);
		Py_DECREF(text);
	}
done:
	PyMem_Free(b.p);
	Py_XDECREF(fresh);
	Py_DECREF(seq);
	return out;
}

static PyMethodDef methods[] = {
	{"flows_text", flows_text, METH_VARARGS, "The flows' JSON texts joined, each with its age."},
	{"pieces", pieces, METH_VARARGS, "A Flow's compact JSON, split around its duration's value."},
	{"sieve", sieve, METH_VARARGS, "The flows keep() keeps, asking it only about flows not `seen` as that object."},
	{"delta", delta, METH_VARARGS, "(changed flows, ids gone) since `shown`, which is updated."},
	{"follow", follow, METH_VARARGS, "A --changes line's (flows, ids gone) from the source's changes."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "_flow_json", "A Flow's compact JSON text, in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__flow_json(void)
{
	PyObject *json = PyImport_ImportModule("json.encoder");
	if (!json)
		return NULL;
	encode_str = PyObject_GetAttrString(json, "c_encode_basestring_ascii");
	Py_DECREF(json);
	key_cache = PyDict_New();
	if (!key_cache || !encode_str || encode_str == Py_None) {
		PyErr_SetString(PyExc_ImportError, "json has no C string encoder");
		return NULL;
	}
	return PyModule_Create(&module);
}
