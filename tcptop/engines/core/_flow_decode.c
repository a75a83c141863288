/* The hot part of flow_decode.py in C: a poll can turn 100,000 records into Flow objects,
 * and in Python each costs ~8 us (45 frozen slots set one by one, the arithmetic of ages
 * and times); here ~0.5 us.
 *
 * It computes exactly what flow_decode.flow_of computes (the same IEEE operations in the
 * same order; tests/unit/test_flow_decode_c.py compares both on random records) and builds
 * an ordinary frozen, slotted model.Flow by filling its slots from their member descriptors'
 * offsets. flow_decode.py loads it when it was built (`make setup` puts it in build/) and for
 * the interpreter running; otherwise the Python functions are used and the run info says so.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#define MAX_FIELDS 64
#define ADDR_CACHE_MAX 65536

static struct {
	PyTypeObject *flow;		/* model.Flow */
	Py_ssize_t nfields;
	Py_ssize_t offset[MAX_FIELDS];	/* of each slot, in field order */
	PyObject *index;		/* field name -> position */
	PyObject *state_names;		/* tuple of 256 */
	PyObject *ca_names;		/* tuple of 256 */
	PyObject *family;		/* dict family -> "ipv4"/"ipv6" */
	PyObject *addr;			/* flow_decode.addr(family, raw), for what is not cached */
	PyObject *rtt_upper_us;		/* each RTT bucket's upper bound (histogram.RTT_UPPER_US) */
	PyObject *no_counts;
	PyObject *addr_cache[2];	/* raw bytes -> str, for AF_INET and the rest */
	PyObject *zero, *empty_str, *empty_tuple;
	/* positions in a record tuple */
	Py_ssize_t i_cookie, i_now, i_family, i_saddr, i_daddr, i_sport, i_dport, i_netns, i_ca;
	Py_ssize_t i_hist, n_hist, i_min_rtt;
	Py_ssize_t metric[22];
	Py_ssize_t record_len;		/* items in a record tuple */		/* flight_size .. write_bytes, srtt, rcv_wnd, ssthresh */
	int ready;
} S;

/* Histograms of one bucket with few samples, made once (rtt_hist): most short connections (a
 * churn of them: 20,000 a second) have one to a few samples, all in one bucket, and each of
 * their flows would otherwise allocate two tuples, freed seconds later from cold memory.
 * Emptied by setup(), which sets the buckets' bounds. */
#define HIST_ONE_MAX 16
static PyObject *hist_one[64][HIST_ONE_MAX + 1];

/* Slot i of a new Flow; `val` is a new reference, stolen. */
static inline void put(PyObject *f, Py_ssize_t i, PyObject *val)
{
	*(PyObject **)((char *)f + S.offset[i]) = val;
}

static PyObject *alloc_flow(void)
{
	return S.flow->tp_alloc(S.flow, 0);
}

/* A filled Flow out of the cyclic collector's sight: it holds numbers, strings, tuples of
 * numbers and the stage and drop tables built for it, none of which can lead back to a Flow,
 * so it can never be part of a cycle; reference counting frees it. Tracked, every flow a
 * poll makes (2,000 of a busy host, 200,000 at a first snapshot) was traversed by gen 0, 1
 * and 2 collections in turn: ~8 ms of a 40 ms poll. */
static PyObject *untracked(PyObject *f)
{
	if (PyObject_GC_IsTracked(f))
		PyObject_GC_UnTrack(f);
	return f;
}

/* (a, b) of two numbers, out of the collector's sight: the engine keeps one per closed flow
 * and per kernel-held end (its _closing queue, its _tw_due heap). Tracked until a collection
 * passed them, they were most of what each gen-0 pass walked under a sustained churn. */
static PyObject *atomic_pair(PyObject *a, PyObject *b)
{
	PyObject *t = PyTuple_Pack(2, a, b);
	if (t)
		PyObject_GC_UnTrack(t);
	return t;
}

/* replaced(record, i, value): the record with item i replaced, as a new tuple (the old one
 * may be shared), out of the collector's sight when it holds numbers and bytes only, as the
 * records unpack_all makes. */
static PyObject *replaced(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	Py_ssize_t i;
	if (nargs != 3 || !PyTuple_Check(args[0]) || (i = PyLong_AsSsize_t(args[1])) < 0 ||
	    i >= PyTuple_GET_SIZE(args[0])) {
		if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_OverflowError)) {
			PyErr_Clear();
			PyErr_SetString(PyExc_TypeError, "replaced: a tuple, an index in it and a value");
		}
		return NULL;
	}
	Py_ssize_t n = PyTuple_GET_SIZE(args[0]);
	PyObject *t = PyTuple_New(n);
	if (!t)
		return NULL;
	int atomic = 1;
	for (Py_ssize_t k = 0; k < n; k++) {
		PyObject *x = k == i ? args[2] : PyTuple_GET_ITEM(args[0], k);
		atomic &= PyLong_CheckExact(x) || PyFloat_CheckExact(x) || PyBytes_CheckExact(x) || PyBool_Check(x);
		PyTuple_SET_ITEM(t, k, Py_NewRef(x));
	}
	if (atomic)
		PyObject_GC_UnTrack(t);
	return t;
}

/* pair(a, b): atomic_pair for the engine's Python code; anything but numbers is refused. */
static PyObject *pair(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	if (nargs != 2 || !(PyLong_CheckExact(args[0]) || PyFloat_CheckExact(args[0])) ||
	    !(PyLong_CheckExact(args[1]) || PyFloat_CheckExact(args[1]))) {
		PyErr_SetString(PyExc_TypeError, "pair: two ints or floats");
		return NULL;
	}
	return atomic_pair(args[0], args[1]);
}

static int ready(void)
{
	if (!S.ready)
		PyErr_SetString(PyExc_RuntimeError, "_flow_decode.setup() was not called");
	return S.ready;
}

static Py_ssize_t index_arg(PyObject *positions, const char *name)
{
	PyObject *v = PyDict_GetItemString(positions, name);
	if (!v) {
		PyErr_Format(PyExc_KeyError, "record position %s", name);
		return -1;
	}
	return PyLong_AsSsize_t(v);
}

static const char *METRICS[] = {
	"flight_size", "snd_wnd", "snd_cwnd", "mss_cache", "total_retrans", "bytes_sent",
	"bytes_received", "fast_retrans", "timeouts", "app_wqueue", "app_wqueue_max",
	"rtt_samples", "rtt_sum_us", "read_bytes", "write_bytes", "srtt_us", "rcv_wnd",
	"snd_ssthresh",
};
#define N_METRICS ((Py_ssize_t)(sizeof(METRICS) / sizeof(METRICS[0])))

/* setup(Flow, fields, positions, record_len, hist_buckets, state_names, ca_names, family, addr,
 *       rtt_upper_us, no_counts) */
static PyObject *setup(PyObject *self, PyObject *args)
{
	PyObject *flow, *fields, *positions, *state_names, *ca_names, *family, *addr, *hist, *no_counts;
	Py_ssize_t n_hist, record_len;

	if (!PyArg_ParseTuple(args, "O!O!O!nnO!O!O!OOO", &PyType_Type, &flow, &PyTuple_Type, &fields,
			      &PyDict_Type, &positions, &record_len, &n_hist, &PyTuple_Type, &state_names,
			      &PyTuple_Type, &ca_names, &PyDict_Type, &family, &addr, &hist, &no_counts))
		return NULL;
	Py_ssize_t n = PyTuple_GET_SIZE(fields);
	if (n > MAX_FIELDS || PyTuple_GET_SIZE(state_names) != 256 || PyTuple_GET_SIZE(ca_names) != 256) {
		PyErr_SetString(PyExc_ValueError, "unexpected Flow or name tables");
		return NULL;
	}
	PyObject *index = PyDict_New();
	if (!index)
		return NULL;
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *name = PyTuple_GET_ITEM(fields, i);
		PyObject *d = PyDict_GetItemWithError(((PyTypeObject *)flow)->tp_dict, name);
		if (!d || !PyObject_TypeCheck(d, &PyMemberDescr_Type) ||
		    ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
			if (!PyErr_Occurred())
				PyErr_Format(PyExc_TypeError, "Flow.%U is not a slot", name);
			Py_DECREF(index);
			return NULL;
		}
		S.offset[i] = ((PyMemberDescrObject *)d)->d_member->offset;
		PyObject *pos = PyLong_FromSsize_t(i);
		if (!pos || PyDict_SetItem(index, name, pos) < 0) {
			Py_XDECREF(pos);
			Py_DECREF(index);
			return NULL;
		}
		Py_DECREF(pos);
	}
	struct { Py_ssize_t *at; const char *name; } pos[] = {
		{&S.i_cookie, "cookie"}, {&S.i_now, "now_ns"}, {&S.i_family, "family"},
		{&S.i_saddr, "saddr"}, {&S.i_daddr, "daddr"}, {&S.i_sport, "sport"},
		{&S.i_dport, "dport"}, {&S.i_netns, "netns"}, {&S.i_ca, "ca_state"},
		{&S.i_hist, "rtt_hist"}, {&S.i_min_rtt, "min_rtt_us"},
	};
	for (size_t i = 0; i < sizeof(pos) / sizeof(pos[0]); i++)
		if ((*pos[i].at = index_arg(positions, pos[i].name)) < 0)
			goto fail;
	for (Py_ssize_t i = 0; i < N_METRICS; i++)
		if ((S.metric[i] = index_arg(positions, METRICS[i])) < 0)
			goto fail;
	for (size_t i = 0; i < sizeof(pos) / sizeof(pos[0]); i++)
		if (*pos[i].at >= record_len)
			goto outside;
	for (Py_ssize_t i = 0; i < N_METRICS; i++)
		if (S.metric[i] >= record_len)
			goto outside;
	if (S.i_hist + n_hist > record_len)
		goto outside;
	if (!PyTuple_Check(hist) || PyTuple_GET_SIZE(hist) != n_hist) {
		PyErr_SetString(PyExc_ValueError, "one RTT bucket bound per bucket");
		goto fail;
	}
	Py_XSETREF(S.index, index);
	S.nfields = n;
	S.n_hist = n_hist;
	S.record_len = record_len;
	Py_INCREF(flow);
	Py_XSETREF(S.flow, (PyTypeObject *)flow);
	Py_XSETREF(S.state_names, Py_NewRef(state_names));
	Py_XSETREF(S.ca_names, Py_NewRef(ca_names));
	Py_XSETREF(S.family, Py_NewRef(family));
	Py_XSETREF(S.addr, Py_NewRef(addr));
	Py_XSETREF(S.rtt_upper_us, Py_NewRef(hist));
	for (int i = 0; i < 64; i++)	/* made of the bounds set before */
		for (int c = 0; c <= HIST_ONE_MAX; c++)
			Py_CLEAR(hist_one[i][c]);
	Py_XSETREF(S.no_counts, Py_NewRef(no_counts));
	for (int i = 0; i < 2; i++)
		if (!S.addr_cache[i] && !(S.addr_cache[i] = PyDict_New()))
			return NULL;
	S.ready = 1;
	Py_RETURN_NONE;
outside:
	PyErr_SetString(PyExc_ValueError, "a record position outside the record");
fail:
	Py_DECREF(index);
	return NULL;
}

/* new_flow(*values): a Flow of its fields in order. */
static PyObject *new_flow(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	if (!ready())
		return NULL;
	if (nargs != S.nfields) {
		PyErr_Format(PyExc_TypeError, "new_flow takes %zd values (%zd given)", S.nfields, nargs);
		return NULL;
	}
	PyObject *f = alloc_flow();
	if (!f)
		return NULL;
	for (Py_ssize_t i = 0; i < nargs; i++)
		put(f, i, Py_NewRef(args[i]));
	return untracked(f);
}

/* with_fields(flow, **changes): a copy with some fields changed. */
static PyObject *with_fields(PyObject *self, PyObject *args, PyObject *kwargs)
{
	PyObject *old, *key, *val;
	Py_ssize_t pos = 0;

	if (!ready() || !PyArg_ParseTuple(args, "O!", S.flow, &old))
		return NULL;
	PyObject *f = alloc_flow();
	if (!f)
		return NULL;
	for (Py_ssize_t i = 0; i < S.nfields; i++) {
		PyObject *v = *(PyObject **)((char *)old + S.offset[i]);
		put(f, i, Py_XNewRef(v));
	}
	while (kwargs && PyDict_Next(kwargs, &pos, &key, &val)) {
		PyObject *at = PyDict_GetItemWithError(S.index, key);
		if (!at) {
			if (!PyErr_Occurred())
				PyErr_Format(PyExc_TypeError, "Flow has no field %R", key);
			Py_DECREF(f);
			return NULL;
		}
		PyObject **slot = (PyObject **)((char *)f + S.offset[PyLong_AsSsize_t(at)]);
		Py_XSETREF(*slot, Py_NewRef(val));
	}
	return untracked(f);
}

/* The printable address of a raw one (cached per family, as flow_decode.addr caches). */
static PyObject *addr_of(PyObject *family, PyObject *raw)
{
	PyObject *cache = S.addr_cache[PyLong_AsLong(family) == 2 ? 0 : 1];
	PyObject *s = PyDict_GetItemWithError(cache, raw);
	if (s)
		return Py_NewRef(s);
	if (PyErr_Occurred())
		return NULL;
	s = PyObject_CallFunctionObjArgs(S.addr, family, raw, NULL);
	if (!s)
		return NULL;
	if (PyDict_GET_SIZE(cache) > ADDR_CACHE_MAX)
		PyDict_Clear(cache);
	if (PyDict_SetItem(cache, raw, s) < 0) {
		Py_DECREF(s);
		return NULL;
	}
	return s;
}

/* ((upper bound in us, samples), ...) of the non-empty buckets, as histogram.rtt_hist; of
 * numbers only, so out of the collector's sight as the Flow holding it. */
static PyObject *rtt_hist(PyObject *const *counts)
{
	Py_ssize_t n = 0, k = 0, last = 0;
	unsigned long c = 0;

	for (Py_ssize_t i = 0; i < S.n_hist; i++) {
		if (counts[i] == S.zero)	/* the small int every empty bucket unpacks to */
			continue;
		unsigned long v = PyLong_AsUnsignedLong(counts[i]);
		if (v == (unsigned long)-1 && PyErr_Occurred())
			return NULL;
		if (v) {
			n++;
			last = i;
			c = v;
		}
	}
	if (!n)
		return Py_NewRef(S.empty_tuple);
	int cacheable = n == 1 && c <= HIST_ONE_MAX && last < 64;
	if (cacheable && hist_one[last][c])
		return Py_NewRef(hist_one[last][c]);
	PyObject *h = PyTuple_New(n);
	if (!h)
		return NULL;
	for (Py_ssize_t i = 0; i < S.n_hist; i++) {
		if (counts[i] == S.zero || PyLong_AsUnsignedLong(counts[i]) == 0)
			continue;
		PyObject *pair = PyTuple_Pack(2, PyTuple_GET_ITEM(S.rtt_upper_us, i), counts[i]);
		if (!pair) {
			Py_DECREF(h);
			return NULL;
		}
		PyObject_GC_UnTrack(pair);
		PyTuple_SET_ITEM(h, k++, pair);
	}
	PyObject_GC_UnTrack(h);
	if (cacheable)
		hist_one[last][c] = Py_NewRef(h);
	return h;
}

static int64_t as_i64(PyObject *o)
{
	return (int64_t)PyLong_AsUnsignedLongLong(o);
}

/* Rounded as flow_decode does it: int(x * scale + 0.5) / scale, for x >= 0. */
static PyObject *rounded(double x, double scale)
{
	return PyFloat_FromDouble((double)(long long)(x * scale + 0.5) / scale);
}

/* flow_of(v, pid, comm, cgroup, container, born_ns, boot_offset, since_start, role, closed,
 *         state, tw_expires_ts): as flow_decode.flow_of. */
static PyObject *flow_of(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	PyObject *vals[MAX_FIELDS] = {0};
	PyObject *f = NULL;

	if (!ready())
		return NULL;
	if (nargs != 12 || !PyTuple_Check(args[0])) {
		PyErr_SetString(PyExc_TypeError, "flow_of(v, pid, comm, cgroup, container, born_ns, "
				"boot_offset, since_start, role, closed, state, tw_expires_ts)");
		return NULL;
	}
	PyObject *v = args[0];
	if (PyTuple_GET_SIZE(v) < S.record_len) {
		PyErr_SetString(PyExc_ValueError, "flow_of: not a whole record");
		return NULL;
	}
	PyObject *const *it = ((PyTupleObject *)v)->ob_item;
	int64_t now_ns = as_i64(it[S.i_now]);
	int64_t born_ns = as_i64(args[5]);
	double boot_offset = PyFloat_AsDouble(args[6]);
	int closed = PyObject_IsTrue(args[9]);
	long state = PyLong_AsLong(args[10]);
	long ca = PyLong_AsLong(it[S.i_ca]);
	if (PyErr_Occurred())
		return NULL;
	if (state < 0 || state > 255 || ca < 0 || ca > 255) {
		PyErr_SetString(PyExc_ValueError, "state out of range");
		return NULL;
	}
	PyObject *fam = it[S.i_family];
	PyObject *family = PyDict_GetItemWithError(S.family, fam);
	family = family ? Py_NewRef(family) : PyErr_Occurred() ? NULL : PyObject_Str(fam);
	if (!family)
		return NULL;
	vals[1] = family;
	if (!(vals[2] = addr_of(fam, it[S.i_saddr])) || !(vals[4] = addr_of(fam, it[S.i_daddr])))
		goto out;
	if (!(vals[39] = rtt_hist(it + S.i_hist)))
		goto out;
	vals[0] = Py_NewRef(it[S.i_cookie]);
	vals[3] = Py_NewRef(it[S.i_sport]);
	vals[5] = Py_NewRef(it[S.i_dport]);
	vals[6] = Py_NewRef(PyTuple_GET_ITEM(S.state_names, state));
	vals[7] = Py_NewRef(args[1]);
	vals[8] = Py_NewRef(args[2]);
	vals[9] = Py_NewRef(it[S.i_netns]);
	for (Py_ssize_t i = 0; i < 15; i++)  /* flight_size .. write_bytes */
		vals[10 + i] = Py_NewRef(it[S.metric[i]]);
	int64_t age_ns = now_ns - born_ns;
	/* int(max(0, now_ns - born_ns) / 1e6 + 0.5) / 1e3 */
	vals[25] = PyFloat_FromDouble((double)(long long)((double)(age_ns > 0 ? age_ns : 0) / 1e6 + 0.5) / 1e3);
	vals[26] = Py_NewRef(it[S.metric[15]]);
	vals[27] = PyLong_AsUnsignedLong(it[S.i_min_rtt]) == 0xFFFFFFFFUL ? Py_NewRef(S.zero)
									 : Py_NewRef(it[S.i_min_rtt]);
	vals[28] = Py_NewRef(it[S.metric[16]]);
	vals[29] = Py_NewRef(it[S.metric[17]]);
	vals[30] = Py_NewRef(PyTuple_GET_ITEM(S.ca_names, ca));
	vals[31] = Py_NewRef(args[9]);
	vals[32] = Py_NewRef(args[7]);
	vals[33] = Py_NewRef(args[3]);
	vals[34] = Py_NewRef(args[4]);
	vals[35] = Py_NewRef(Py_None);
	vals[36] = rounded(boot_offset + (double)born_ns / 1e9, 1e6);
	vals[37] = closed ? rounded(boot_offset + (double)now_ns / 1e9, 1e6) : PyFloat_FromDouble(0.0);
	vals[38] = Py_NewRef(args[8]);
	vals[40] = Py_NewRef(args[11]);
	vals[41] = Py_NewRef(S.no_counts);
	vals[42] = Py_NewRef(S.zero);
	vals[43] = Py_NewRef(S.zero);
	vals[44] = Py_NewRef(S.empty_str);
	for (Py_ssize_t i = 0; i < S.nfields; i++)
		if (!vals[i])
			goto out;
	if (!(f = alloc_flow()))
		goto out;
	for (Py_ssize_t i = 0; i < S.nfields; i++) {
		put(f, i, vals[i]);
		vals[i] = NULL;
	}
	untracked(f);
out:
	for (Py_ssize_t i = 0; i < MAX_FIELDS; i++)
		Py_XDECREF(vals[i]);
	if (!f && !PyErr_Occurred())
		PyErr_NoMemory();
	return f;
}

/* Every record of `buf`, unpacked by the struct.Struct `fmt`, as a list of tuples out of the
 * collector's sight. A record holds numbers and bytes only, so its tuple can never be part
 * of a cycle; CPython itself untracks such a tuple, but only when a collection first looks
 * at it. A busy poll keeps ~2,000 records and ~4,000 notices (60 items each): the gen-0
 * collection that met them cost 3-8 ms of a 35 ms poll.
 *
 * The formats struct_format() writes (little-endian, x Q I H B s only) are read here by a
 * plan made once per format string: struct's own unpacker assembles each little-endian
 * integer byte by byte behind a call per item, ~1.8 us for a 65-item record, a tenth of the
 * process's CPU under a churn of connections. Any other format goes through iter_unpack. */
#define MAX_PLANS 16
struct unpack_item {
	Py_ssize_t off, len;	/* len: the size of an integer, or of a bytes item ('s') */
	char code;
};
static struct unpack_plan {
	PyObject *format;	/* str */
	Py_ssize_t size, n;
	struct unpack_item *items;
} plans[MAX_PLANS];
static int n_plans;

/* The plan of a format string; NULL without an error when this reader does not take it. */
static struct unpack_plan *plan_of(PyObject *format)
{
	for (int i = 0; i < n_plans; i++)
		if (PyUnicode_Compare(plans[i].format, format) == 0)
			return &plans[i];
	if (PyErr_Occurred() || n_plans == MAX_PLANS)
		return NULL;
	const char *f = PyUnicode_AsUTF8(format);
	if (!f)
		return NULL;
	const uint16_t one = 1;
	if (f[0] != '<' || *(const uint8_t *)&one != 1)	/* little-endian data on a little-endian host */
		return NULL;
	struct unpack_plan p = {0};
	Py_ssize_t cap = 0, off = 0;
	for (const char *c = f + 1; *c;) {
		Py_ssize_t count = 1;
		if (*c >= '0' && *c <= '9') {
			count = 0;
			while (*c >= '0' && *c <= '9' && count < 1 << 20)
				count = count * 10 + (*c++ - '0');
		}
		char code = *c++;
		Py_ssize_t size = code == 'Q' ? 8 : code == 'I' ? 4 : code == 'H' ? 2 : code == 'B' ? 1 : 0;
		if (code == 'x') {
			off += count;
			continue;
		}
		if (!size && code != 's')
			goto refuse;
		for (Py_ssize_t k = 0; k < (code == 's' ? 1 : count); k++) {
			if (p.n == cap) {
				cap = cap ? 2 * cap : 64;
				struct unpack_item *grown = PyMem_Realloc(p.items, cap * sizeof(*grown));
				if (!grown)
					goto fail;
				p.items = grown;
			}
			p.items[p.n++] = (struct unpack_item){off, code == 's' ? count : size, code};
			off += code == 's' ? count : size;
		}
	}
	if (!off)
		goto refuse;	/* struct's own error for a format of no bytes */
	p.size = off;
	p.format = Py_NewRef(format);
	plans[n_plans] = p;
	return &plans[n_plans++];
refuse:
	PyMem_Free(p.items);
	return NULL;
fail:
	PyMem_Free(p.items);
	PyErr_NoMemory();
	return NULL;
}

static PyObject *unpack_item(const char *rec, const struct unpack_item *it)
{
	const char *at = rec + it->off;
	switch (it->code) {
	case 'Q': {
		uint64_t v;
		memcpy(&v, at, 8);
		return PyLong_FromUnsignedLongLong(v);
	}
	case 'I': {
		uint32_t v;
		memcpy(&v, at, 4);
		return PyLong_FromUnsignedLong(v);
	}
	case 'H': {
		uint16_t v;
		memcpy(&v, at, 2);
		return PyLong_FromUnsignedLong(v);
	}
	case 'B':
		return PyLong_FromUnsignedLong(*(const uint8_t *)at);
	default:
		return PyBytes_FromStringAndSize(at, it->len);
	}
}

/* The integer item `i` of a record, raw. */
static unsigned long long raw_item(const char *rec, const struct unpack_item *it)
{
	const char *at = rec + it->off;
	uint64_t q = 0;
	uint32_t w = 0;
	uint16_t h = 0;
	switch (it->code) {
	case 'Q':
		memcpy(&q, at, 8);
		return q;
	case 'I':
		memcpy(&w, at, 4);
		return w;
	case 'H':
		memcpy(&h, at, 2);
		return h;
	default:
		return *(const uint8_t *)at;
	}
}

/* What unpack_all leaves out: records whose item `kind_at` is `kind` and whose item 0 is in
 * `ids` (a set). */
struct skip {
	Py_ssize_t kind_at;
	unsigned long long kind;
	PyObject *ids;
};

static int skipped(const char *rec, struct unpack_plan *p, const struct skip *sk)
{
	if (!sk || raw_item(rec, &p->items[sk->kind_at]) != sk->kind)
		return 0;
	PyObject *id = PyLong_FromUnsignedLongLong(raw_item(rec, &p->items[0]));
	if (!id)
		return -1;
	int in = PySet_Contains(sk->ids, id);
	Py_DECREF(id);
	return in;
}

static PyObject *unpack_planned(struct unpack_plan *p, PyObject *buf, const struct skip *sk)
{
	Py_buffer view;
	if (PyObject_GetBuffer(buf, &view, PyBUF_SIMPLE) < 0)
		return NULL;
	PyObject *out = NULL;
	if (p->size == 0 || view.len % p->size) {
		PyObject *mod = PyImport_ImportModule("struct");
		PyObject *error = mod ? PyObject_GetAttrString(mod, "error") : NULL;
		if (error)
			PyErr_Format(error, "iterative unpacking requires a buffer of a multiple of %zd bytes", p->size);
		Py_XDECREF(error);
		Py_XDECREF(mod);
		goto done;
	}
	Py_ssize_t nrec = view.len / p->size, kept = 0;
	if (!(out = PyList_New(nrec)))
		goto done;
	for (Py_ssize_t r = 0; r < nrec; r++) {
		const char *rec = (const char *)view.buf + r * p->size;
		int skip = skipped(rec, p, sk);
		if (skip < 0)
			goto fail;
		if (skip)
			continue;
		PyObject *t = PyTuple_New(p->n);
		if (!t)
			goto fail;
		PyList_SET_ITEM(out, kept++, t);
		for (Py_ssize_t i = 0; i < p->n; i++) {
			PyObject *v = unpack_item(rec, &p->items[i]);
			if (!v)
				goto fail;
			PyTuple_SET_ITEM(t, i, v);
		}
		PyObject_GC_UnTrack(t);	/* ints and bytes only: never in a cycle */
	}
	if (kept < nrec && PyList_SetSlice(out, kept, nrec, NULL) < 0)	/* the unused slots are NULL */
		goto fail;
	goto done;
fail:
	Py_CLEAR(out);
done:
	PyBuffer_Release(&view);
	return out;
}

/* unpack_all(fmt, buf, skip=None); skip: (kind_at, kind, ids), see struct skip. */
static PyObject *unpack_all(PyObject *self, PyObject *args)
{
	PyObject *fmt, *buf, *skip_arg = Py_None;
	struct skip sk;
	if (!PyArg_ParseTuple(args, "OO|O", &fmt, &buf, &skip_arg))
		return NULL;
	if (skip_arg != Py_None) {
		if (!PyArg_ParseTuple(skip_arg, "nKO!", &sk.kind_at, &sk.kind, &PySet_Type, &sk.ids))
			return NULL;
	}
	PyObject *format = PyObject_GetAttrString(fmt, "format");
	if (!format)
		return NULL;
	struct unpack_plan *p = PyUnicode_Check(format) ? plan_of(format) : NULL;
	Py_DECREF(format);
	if (p && skip_arg != Py_None) {	/* items that are not numbers: compared as objects, below */
		char c0 = p->items[0].code, ck = sk.kind_at >= 0 && sk.kind_at < p->n ? p->items[sk.kind_at].code : 's';
		if (c0 == 's' || ck == 's')
			p = NULL;
	}
	if (p)
		return unpack_planned(p, buf, skip_arg != Py_None ? &sk : NULL);
	if (PyErr_Occurred())
		return NULL;
	PyObject *it = PyObject_CallMethod(fmt, "iter_unpack", "O", buf);
	if (!it)
		return NULL;
	PyObject *out = PySequence_List(it);
	Py_DECREF(it);
	if (!out)
		return NULL;
	Py_ssize_t n = PyList_GET_SIZE(out);
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *t = PyList_GET_ITEM(out, i);
		if (!PyTuple_CheckExact(t) || !PyObject_GC_IsTracked(t))
			continue;
		Py_ssize_t k, m = PyTuple_GET_SIZE(t);
		for (k = 0; k < m; k++) {
			PyObject *x = PyTuple_GET_ITEM(t, k);
			if (!PyLong_CheckExact(x) && !PyBytes_CheckExact(x) && !PyFloat_CheckExact(x) &&
			    !PyBool_Check(x))
				break;
		}
		if (k == m)
			PyObject_GC_UnTrack(t);
	}
	if (skip_arg == Py_None)
		return out;
	/* a format it does not plan (not one of ours): the same records left out, from the tuples */
	PyObject *kept = PyList_New(0), *kind = PyLong_FromUnsignedLongLong(sk.kind);
	if (!kind)
		Py_CLEAR(kept);
	for (Py_ssize_t i = 0; kept && kind && i < n; i++) {
		PyObject *t = PyList_GET_ITEM(out, i);
		int skip = PyTuple_GET_SIZE(t) > sk.kind_at && sk.kind_at >= 0
				   ? PyObject_RichCompareBool(PyTuple_GET_ITEM(t, sk.kind_at), kind, Py_EQ) : 0;
		if (skip > 0)
			skip = PySet_Contains(sk.ids, PyTuple_GET_ITEM(t, 0));
		if (skip < 0 || (!skip && PyList_Append(kept, t) < 0))
			Py_CLEAR(kept);
	}
	Py_XDECREF(kind);
	Py_DECREF(out);
	return kept;
}

/* ---- The flow engine's pass over live records (FlowEngine._apply, flows.py) ----------------
 *
 * A busy poll applies ~2,000 records, a first snapshot 200,000; in Python the bookkeeping
 * around each (its _Track, the sets the next poll reads, the owner's names) cost ~4.5 us of
 * a record's ~6. Here the common record is applied in C: a live record of a live connection
 * whose owner is known, with the small rules it needs (`_set_place`, `_repoint`) mirrored.
 * Anything else is handed, in order, to the engine's own Python methods (`_apply_other`,
 * `_decode`); flows.py's py_apply_live is the same pass in Python, and
 * tests/unit/test_flow_apply_c.py runs both over the same records and compares every track,
 * flow and set. */

enum { TS_VALS, TS_FLOW, TS_WANT, TS_NETNS, TS_BORN, TS_KIND, TS_OWNER, TS_REFS, TS_TW, TS_SINCE, TS_N };
static const char *TRACK_SLOTS[TS_N] = {"vals", "flow", "want", "netns", "born_ns", "kind", "owner", "refs",
					 "tw_expires_ts", "since_start"};

static struct {
	PyTypeObject *track;
	Py_ssize_t slot[TS_N];
	Py_ssize_t i_kind, i_flags, i_pid, i_refs, i_ino, i_est, i_state, i_comm, i_tw_left;
	long kind_live, kind_closed, kind_late, kind_tw, st_fin_wait1, st_fin_wait2, st_closing;
	unsigned long quiescent, seen_birth, client, server, no_counters, reset_rcvd, timed_out, lookup_v4;
	PyObject *state_closed, *zero_f;	/* 7 (model.TCP_STATES' CLOSE), 0.0 */
	PyObject *append_s;
	PyObject *heappush, *time_mod, *time_s;	/* heapq.heappush; the time module, "time" */
	PyObject *client_s, *server_s, *empty_bytes, *comm_of;
	PyObject *proto;	/* a track as its __init__ leaves it: new tracks start as copies */
	int ready;
} T;

static inline PyObject *tget(PyObject *tr, int i)	/* borrowed; NULL if never set */
{
	return *(PyObject **)((char *)tr + T.slot[i]);
}

static inline void tset(PyObject *tr, int i, PyObject *val)	/* val borrowed */
{
	Py_XSETREF(*(PyObject **)((char *)tr + T.slot[i]), Py_NewRef(val));
}

static unsigned long const_of(PyObject *consts, const char *name, int *ok)
{
	PyObject *v = PyDict_GetItemString(consts, name);
	if (!v) {
		PyErr_Format(PyExc_KeyError, "setup_tracks: no %s", name);
		*ok = 0;
		return 0;
	}
	return PyLong_AsUnsignedLong(v);
}

/* setup_tracks(Track, positions, consts, comm_of) */
static PyObject *setup_tracks(PyObject *self, PyObject *args)
{
	PyObject *track, *positions, *consts, *comm_of;
	int ok = 1;

	if (!PyArg_ParseTuple(args, "O!O!O!O", &PyType_Type, &track, &PyDict_Type, &positions, &PyDict_Type,
			      &consts, &comm_of))
		return NULL;
	if (!ready())
		return NULL;
	for (int i = 0; i < TS_N; i++) {
		PyObject *d = PyDict_GetItemString(((PyTypeObject *)track)->tp_dict, TRACK_SLOTS[i]);
		if (!d || !PyObject_TypeCheck(d, &PyMemberDescr_Type) ||
		    ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
			PyErr_Format(PyExc_TypeError, "the track's %s is not a slot", TRACK_SLOTS[i]);
			return NULL;
		}
		T.slot[i] = ((PyMemberDescrObject *)d)->d_member->offset;
	}
	struct { Py_ssize_t *at; const char *name; } pos[] = {
		{&T.i_kind, "kind"}, {&T.i_flags, "flags"}, {&T.i_pid, "pid"}, {&T.i_refs, "file_refs"},
		{&T.i_ino, "sock_ino"}, {&T.i_est, "established_ns"}, {&T.i_state, "state"}, {&T.i_comm, "comm"},
		{&T.i_tw_left, "tw_left_ms"},
	};
	for (size_t i = 0; i < sizeof(pos) / sizeof(pos[0]); i++) {
		if ((*pos[i].at = index_arg(positions, pos[i].name)) < 0)
			return NULL;
		if (*pos[i].at >= S.record_len) {
			PyErr_SetString(PyExc_ValueError, "a record position outside the record");
			return NULL;
		}
	}
	T.kind_live = (long)const_of(consts, "KIND_LIVE", &ok);
	T.kind_closed = (long)const_of(consts, "KIND_CLOSED", &ok);
	T.kind_late = (long)const_of(consts, "KIND_LATE", &ok);
	T.kind_tw = (long)const_of(consts, "KIND_TW", &ok);
	T.st_fin_wait1 = (long)const_of(consts, "ST_FIN_WAIT1", &ok);
	T.st_fin_wait2 = (long)const_of(consts, "ST_FIN_WAIT2", &ok);
	T.st_closing = (long)const_of(consts, "ST_CLOSING", &ok);
	T.reset_rcvd = const_of(consts, "REC_RESET_RCVD", &ok);
	T.timed_out = const_of(consts, "REC_TIMED_OUT", &ok);
	T.lookup_v4 = const_of(consts, "REC_LOOKUP_V4", &ok);
	Py_XSETREF(T.state_closed, PyLong_FromUnsignedLong(const_of(consts, "ST_CLOSED", &ok)));
	if (!T.zero_f && !(T.zero_f = PyFloat_FromDouble(0.0)))
		return NULL;
	if (!T.append_s && !(T.append_s = PyUnicode_InternFromString("append")))
		return NULL;
	if (!T.time_s && !(T.time_s = PyUnicode_InternFromString("time")))
		return NULL;
	if (!T.time_mod && !(T.time_mod = PyImport_ImportModule("time")))
		return NULL;
	if (!T.heappush) {
		PyObject *heapq = PyImport_ImportModule("heapq");
		T.heappush = heapq ? PyObject_GetAttrString(heapq, "heappush") : NULL;
		Py_XDECREF(heapq);
		if (!T.heappush)
			return NULL;
	}
	T.quiescent = const_of(consts, "REC_QUIESCENT", &ok);
	T.seen_birth = const_of(consts, "REC_SEEN_BIRTH", &ok);
	T.client = const_of(consts, "REC_CLIENT", &ok);
	T.server = const_of(consts, "REC_SERVER", &ok);
	T.no_counters = const_of(consts, "REC_NO_COUNTERS", &ok);
	if (!ok || PyErr_Occurred())
		return NULL;
	if (!T.client_s && !(T.client_s = PyUnicode_InternFromString("client")))
		return NULL;
	if (!T.server_s && !(T.server_s = PyUnicode_InternFromString("server")))
		return NULL;
	if (!T.empty_bytes && !(T.empty_bytes = PyBytes_FromStringAndSize(NULL, 0)))
		return NULL;
	PyObject *proto = PyObject_CallNoArgs(track);
	if (!proto)
		return NULL;
	for (int i = 0; i < TS_N; i++)
		if (!tget(proto, i)) {
			PyErr_Format(PyExc_TypeError, "the track's __init__ leaves %s unset", TRACK_SLOTS[i]);
			Py_DECREF(proto);
			return NULL;
		}
	if (((PyTypeObject *)track)->tp_dictoffset || ((PyTypeObject *)track)->tp_weaklistoffset) {
		PyErr_SetString(PyExc_TypeError, "the track has more than its slots");
		Py_DECREF(proto);
		return NULL;
	}
	Py_XSETREF(T.proto, proto);
	Py_INCREF(track);
	Py_XSETREF(T.track, (PyTypeObject *)track);
	Py_XSETREF(T.comm_of, Py_NewRef(comm_of));
	T.ready = 1;
	Py_RETURN_NONE;
}

/* 0 if `v` is a tuple of at least `len` items; else -1 with "who: not a whole what". */
static int whole(PyObject *v, Py_ssize_t len, const char *who, const char *what)
{
	if (PyTuple_Check(v) && PyTuple_GET_SIZE(v) >= len)
		return 0;
	PyErr_Format(PyExc_ValueError, "%s: not a whole %s", who, what);
	return -1;
}

/* What one apply_live call works with: the engine's containers, fetched once. */
struct live_ctx {
	PyObject *eng, *tracks, *flows, *touched, *watch, *verify, *no_counters, *redecode, *pinfo, *boot;
	PyObject *ns_count, *by_pid, *tw_due;
	PyObject *first;
	PyObject *owners;	/* the engine's Owners, fetched when first needed */
	int changed;
};

static int call_method(PyObject *eng, const char *name, PyObject *a, PyObject *b, PyObject *c, PyObject *d)
{
	PyObject *r = PyObject_CallMethod(eng, name, d ? "OOOO" : c ? "OOO" : "OO", a, b, c, d);
	Py_XDECREF(r);
	return r ? 0 : -1;
}


/* A new track, as _Track() makes it (a copy of the prototype's slots), out of the
 * collector's sight: a track holds a record (numbers and bytes), a Flow, bytes and numbers,
 * none of which can lead back to it. Tracked, the ~100,000 tracks of a churn's TIME_WAIT
 * ends made every gen-2 collection a 100-190 ms pause. */
static PyObject *new_track(void)
{
	PyObject *tr = T.track->tp_alloc(T.track, 0);
	if (!tr)
		return NULL;
	for (int i = 0; i < TS_N; i++)
		*(PyObject **)((char *)tr + T.slot[i]) = Py_NewRef(tget(T.proto, i));
	if (PyObject_GC_IsTracked(tr))
		PyObject_GC_UnTrack(tr);
	return tr;
}

/* untrack(obj): an object of a slotted class (no __dict__, no __weakref__) out of the
 * collector's sight, as new_track's tracks are. Only for objects that cannot be part of a
 * cycle: the caller says why (a flow engine track; the failure engine's per-socket tally). */
static PyObject *untrack(PyObject *self, PyObject *obj)
{
	PyTypeObject *tp = Py_TYPE(obj);
	if (!PyType_HasFeature(tp, Py_TPFLAGS_HEAPTYPE) || tp->tp_dictoffset || tp->tp_weaklistoffset ||
	    !PyType_IS_GC(tp) || tp->tp_base != &PyBaseObject_Type) {
		PyErr_SetString(PyExc_TypeError, "untrack: not an object of a plain slotted class");
		return NULL;
	}
	if (PyObject_GC_IsTracked(obj))
		PyObject_GC_UnTrack(obj);
	Py_RETURN_NONE;
}

/* counter[key] += by, as collections.Counter does it (a missing key counts 0). */
static int count_add(PyObject *counter, PyObject *key, long by)
{
	PyObject *n = PyDict_GetItemWithError(counter, key);
	long long now = 0;
	if (n) {
		now = PyLong_AsLongLong(n);
		if (now == -1 && PyErr_Occurred())
			return -1;
	} else if (PyErr_Occurred()) {
		return -1;
	}
	PyObject *v = PyLong_FromLongLong(now + by);
	if (!v)
		return -1;
	int rc = PyDict_SetItem(counter, key, v);
	Py_DECREF(v);
	return rc;
}

/* FlowEngine._set_place(tr, want, ns) (want borrowed) */
static int set_place_want(struct live_ctx *c, PyObject *tr, PyObject *want, PyObject *ns)
{
	PyObject *was = tget(tr, TS_NETNS);
	tset(tr, TS_WANT, want);
	int same = PyObject_RichCompareBool(was, ns, Py_EQ);
	if (same)
		return same < 0 ? -1 : 0;
	int had = PyObject_IsTrue(was);
	if (had < 0 || (had && count_add(c->ns_count, was, -1) < 0) || count_add(c->ns_count, ns, 1) < 0)
		return -1;
	tset(tr, TS_NETNS, ns);
	return 0;
}

/* FlowEngine._set_place(tr, b"", ns) */
static int set_place(struct live_ctx *c, PyObject *tr, PyObject *ns)
{
	return set_place_want(c, tr, T.empty_bytes, ns);
}

/* FlowEngine._repoint(cookie, old_pid, pid) */
static int repoint(struct live_ctx *c, PyObject *cookie, PyObject *old_pid, PyObject *pid)
{
	int t = PyObject_IsTrue(old_pid);
	if (t < 0)
		return -1;
	if (t) {
		PyObject *pids = PyDict_GetItemWithError(c->by_pid, old_pid);
		if (!pids && PyErr_Occurred())
			return -1;
		if (pids) {
			if (!PySet_Check(pids) || PySet_Discard(pids, cookie) < 0)
				return PyErr_Occurred() ? -1 : (PyErr_SetString(PyExc_TypeError, "by_pid"), -1);
			if (!PySet_GET_SIZE(pids) && PyDict_DelItem(c->by_pid, old_pid) < 0)
				return -1;
		}
	}
	if ((t = PyObject_IsTrue(pid)) <= 0)
		return t;
	PyObject *pids = PyDict_GetItemWithError(c->by_pid, pid);
	if (!pids) {
		if (PyErr_Occurred() || !(pids = PySet_New(NULL)))
			return -1;
		int rc = PyDict_SetItem(c->by_pid, pid, pids);
		Py_DECREF(pids);
		if (rc < 0)
			return -1;
	}
	return PySet_Check(pids) ? PySet_Add(pids, cookie) : (PyErr_SetString(PyExc_TypeError, "by_pid"), -1);
}

/* FlowEngine._pid_info(pid): (comm, cgroup, container), a new reference; NULL with no error
 * when it is not such a tuple (the caller leaves that case to Python). */
static PyObject *pid_info(struct live_ctx *c, PyObject *pid)
{
	PyObject *info = PyDict_GetItemWithError(c->pinfo, pid);
	if (info)
		Py_INCREF(info);
	else if (PyErr_Occurred() || !(info = PyObject_CallMethod(c->eng, "_pid_info", "O", pid)))
		return NULL;
	if (!PyTuple_Check(info) || PyTuple_GET_SIZE(info) != 3)
		Py_CLEAR(info);
	return info;
}

/* _decode's owner by the socket's inode, when neither the record nor the track names one (a
 * socket accepted or made before its process was known; under a churn of connections
 * thousands a poll): sets *pid and returns its info, new references; NULL with no error when
 * Python must decide. */
static PyObject *owner_by_inode(struct live_ctx *c, PyObject *ino, PyObject **pid)
{
	static PyObject *name;
	if (!name && !(name = PyUnicode_InternFromString("pid_of_inode")))
		return NULL;
	if (!c->owners && !(c->owners = PyObject_GetAttrString(c->eng, "owners")))
		return NULL;
	if (!(*pid = PyObject_CallMethodOneArg(c->owners, name, ino)))
		return NULL;
	int known = PyObject_IsTrue(*pid);
	PyObject *info = known > 0 ? pid_info(c, *pid) : known == 0 ? PyTuple_Pack(3, S.empty_str, S.empty_str, S.empty_str)
									: NULL;
	if (!info)
		Py_CLEAR(*pid);
	return info;
}

/* FlowEngine._decode of a track (from its vals); what it cannot tell as _decode would goes to
 * _decode itself. */
static int decode_live(struct live_ctx *c, PyObject *cookie, PyObject *tr)
{
	PyObject *v = tget(tr, TS_VALS);
	if (!v || !PyTuple_Check(v) || PyTuple_GET_SIZE(v) < S.record_len)	/* known from a notice only */
		return call_method(c->eng, "_decode", cookie, tr, NULL, NULL);
	PyObject *const *it = ((PyTupleObject *)v)->ob_item;
	unsigned long flags = PyLong_AsUnsignedLong(it[T.i_flags]);
	long kind = PyLong_AsLong(tget(tr, TS_KIND));
	int live = kind == T.kind_live, closed = kind == T.kind_closed;
	PyObject *owner = tget(tr, TS_OWNER);
	PyObject *old = tget(tr, TS_FLOW);
	PyObject *pid = (owner && PyObject_IsTrue(owner)) ? owner : it[T.i_pid];
	PyObject *info = NULL;
	int rc = -1;

	if (PyErr_Occurred())
		return -1;
	if (!live && !closed && kind != T.kind_tw)
		return call_method(c->eng, "_decode", cookie, tr, NULL, NULL);
	if (!live && old && old != Py_None && PyObject_IsTrue(*(PyObject **)((char *)old + S.offset[7]))) {
		/* who had it when it ended: Flow.pid, comm, cgroup, container */
		pid = *(PyObject **)((char *)old + S.offset[7]);
		info = PyTuple_Pack(3, *(PyObject **)((char *)old + S.offset[8]),
				    *(PyObject **)((char *)old + S.offset[33]), *(PyObject **)((char *)old + S.offset[34]));
		if (!info)
			return -1;
		Py_INCREF(pid);
	} else {
		int named = PyObject_IsTrue(pid);
		if (named < 0 || (named && !(info = pid_info(c, pid)) && PyErr_Occurred()))
			return -1;
		if (info) {
			Py_INCREF(pid);
		} else if (named) {	/* its owner is gone: _decode (_owner_gone) says who it is now */
			return call_method(c->eng, "_decode", cookie, tr, NULL, NULL);
		} else if (!(info = owner_by_inode(c, it[T.i_ino], &pid))) {	/* no owner known: by inode */
			return PyErr_Occurred() ? -1 : call_method(c->eng, "_decode", cookie, tr, NULL, NULL);
		}
	}
	PyObject *since = Py_True;
	if (flags & T.seen_birth) {
		if (PyObject_IsTrue(it[T.i_est]))
			tset(tr, TS_BORN, it[T.i_est]);
		since = Py_False;
	}
	tset(tr, TS_SINCE, since);
	long long refs = PyLong_AsLongLong(it[T.i_refs]);
	long long trefs = PyLong_AsLongLong(tget(tr, TS_REFS));
	int has_pid = PyObject_IsTrue(pid);
	if (PyErr_Occurred() || has_pid < 0)
		goto out;
	if (!live) {
		/* an ended socket's file references say nothing of its owner */
	} else if (trefs == -1 && has_pid) {
		tset(tr, TS_REFS, it[T.i_refs]);
	} else if (trefs == -2 || (trefs != refs && (!has_pid || trefs >= 0))) {
		if (PySet_Add(c->verify, cookie) < 0)
			goto out;
	}
	PyObject *comm = PyTuple_GET_ITEM(info, 0);
	PyObject *comm_new = NULL;
	if (!PyObject_IsTrue(comm)) {
		int same = has_pid ? PyObject_RichCompareBool(pid, it[T.i_pid], Py_EQ) : 0;
		if (same < 0)
			goto out;
		comm = same ? (comm_new = PyObject_CallOneArg(T.comm_of, it[T.i_comm])) : S.empty_str;
		if (!comm)
			goto out;
	}
	PyObject *role = flags & T.client ? T.client_s : flags & T.server ? T.server_s : S.empty_str;
	PyObject *fargs[12] = {v, pid, comm, PyTuple_GET_ITEM(info, 1), PyTuple_GET_ITEM(info, 2),
			       tget(tr, TS_BORN), c->boot, since, role, closed ? Py_True : Py_False,
			       closed ? T.state_closed : it[T.i_state], tget(tr, TS_TW)};
	PyObject *f = flow_of(NULL, fargs, 12);
	Py_XDECREF(comm_new);
	if (!f)
		goto out;
	Py_XINCREF(old);
	tset(tr, TS_FLOW, f);
	if (PyDict_SetItem(c->flows, cookie, f) < 0 || PySet_Add(c->touched, cookie) < 0) {
		Py_DECREF(f);
		Py_XDECREF(old);
		goto out;
	}
	Py_DECREF(f);
	c->changed = 1;
	if (PySet_GET_SIZE(c->redecode) && PySet_Discard(c->redecode, cookie) < 0) {
		Py_XDECREF(old);
		goto out;
	}
	int moved = 1;
	PyObject *old_pid = S.zero;
	if (old && old != Py_None) {
		old_pid = *(PyObject **)((char *)old + S.offset[7]);	/* Flow.pid */
		moved = PyObject_RichCompareBool(old_pid, pid, Py_NE);
	}
	if (moved < 0 || (moved && repoint(c, cookie, old_pid, pid) < 0)) {
		Py_XDECREF(old);
		goto out;
	}
	Py_XDECREF(old);
	if (flags & T.no_counters && !closed) {
		if (PySet_Add(c->no_counters, cookie) < 0)
			goto out;
	} else if (PySet_GET_SIZE(c->no_counters) && PySet_Discard(c->no_counters, cookie) < 0) {
		goto out;
	}
	rc = 0;
out:
	Py_DECREF(pid);
	Py_DECREF(info);
	return rc;
}

/* round(x, 3) as Python rounds a float: the same correctly rounded decimal digits. */
static double round3(double x, int *err)
{
	char *str = PyOS_double_to_string(x, 'f', 3, 0, NULL);
	if (!str) {
		*err = 1;
		return 0.0;
	}
	double r = PyOS_string_to_double(str, NULL, NULL);
	PyMem_Free(str);
	if (r == -1.0 && PyErr_Occurred())
		*err = 1;
	return r;
}

/* FlowEngine._to_tw: a TIME_WAIT or FIN_WAIT2 end, with the final values if the track had
 * them, looked up again when its timer is due. */
static int to_tw(struct live_ctx *c, PyObject *cookie, PyObject *tr, PyObject *v)
{
	PyObject *const *it = ((PyTupleObject *)v)->ob_item;
	PyObject *clock = PyObject_GetAttr(T.time_mod, T.time_s);	/* looked up each time, as Python does */
	PyObject *now_o = clock ? PyObject_CallNoArgs(clock) : NULL;
	Py_XDECREF(clock);
	if (!now_o)
		return -1;
	double now = PyFloat_AsDouble(now_o);
	Py_DECREF(now_o);
	long state = PyLong_AsLong(it[T.i_state]);
	long long left = PyLong_AsLongLong(it[T.i_tw_left]);
	int err = 0;
	if (PyErr_Occurred())
		return -1;
	double expires = round3(now + (double)left / 1000, &err);
	if (err)
		return -1;
	PyObject *due = PyFloat_FromDouble(state == T.st_fin_wait2 ? now : expires + 0.05);
	PyObject *entry = due ? atomic_pair(due, cookie) : NULL;
	Py_XDECREF(due);
	PyObject *r = entry ? PyObject_CallFunctionObjArgs(T.heappush, c->tw_due, entry, NULL) : NULL;
	Py_XDECREF(entry);
	if (!r)
		return -1;
	Py_DECREF(r);
	PyObject *base = tget(tr, TS_VALS);
	long kind = PyLong_AsLong(tget(tr, TS_KIND));
	double was = PyFloat_AsDouble(tget(tr, TS_TW));
	if (PyErr_Occurred())
		return -1;
	if (kind == T.kind_tw && base && PyTuple_Check(base) && PyTuple_GET_SIZE(base) > T.i_state) {
		int same = PyObject_RichCompareBool(PyTuple_GET_ITEM(base, T.i_state), it[T.i_state], Py_EQ);
		if (same < 0)
			return -1;
		if (same && fabs(expires - was) < 1.0)
			return 0;	/* as it was */
	}
	PyObject *exp_o = PyFloat_FromDouble(expires);
	if (!exp_o)
		return -1;
	tset(tr, TS_TW, exp_o);
	Py_DECREF(exp_o);
	if (PySet_Discard(c->watch, cookie) < 0 || PySet_Discard(c->verify, cookie) < 0)
		return -1;
	long base_kind = -1;
	if (base != Py_None && (!PyTuple_Check(base) || PyTuple_GET_SIZE(base) < S.record_len)) {
		PyErr_SetString(PyExc_ValueError, "to_tw: a track's values are not a record");
		return -1;
	}
	if (base != Py_None && (base_kind = PyLong_AsLong(PyTuple_GET_ITEM(base, T.i_kind))) == -1 && PyErr_Occurred())
		return -1;
	if (base == Py_None || base_kind == T.kind_tw) {	/* older than tcptop: only the kernel's end is known */
		tset(tr, TS_VALS, v);
		tset(tr, TS_SINCE, Py_True);
	} else {
		Py_ssize_t n = PyTuple_GET_SIZE(base);
		PyObject *merged = PyTuple_New(n);	/* a new tuple: the old one may be shared */
		if (!merged)
			return -1;
		for (Py_ssize_t i = 0; i < n; i++)
			PyTuple_SET_ITEM(merged, i, Py_NewRef(i == T.i_state ? it[T.i_state] : PyTuple_GET_ITEM(base, i)));
		PyObject_GC_UnTrack(merged);	/* a record's numbers and bytes, as unpack_all's tuples */
		tset(tr, TS_VALS, merged);
		Py_DECREF(merged);
	}
	PyObject *k = PyLong_FromLong(T.kind_tw);
	if (!k)
		return -1;
	tset(tr, TS_KIND, k);
	Py_DECREF(k);
	if (set_place(c, tr, it[S.i_netns]) < 0)
		return -1;
	return decode_live(c, cookie, tr);
}

/* One record, as the loop in py_apply_live. */
static int apply_one(struct live_ctx *c, PyObject *v)
{
	if (whole(v, S.record_len, "apply_live", "record") < 0)
		return -1;
	PyObject *const *it = ((PyTupleObject *)v)->ob_item;
	PyObject *cookie = it[S.i_cookie];
	long kind = PyLong_AsLong(it[T.i_kind]);
	unsigned long flags = PyLong_AsUnsignedLong(it[T.i_flags]);
	if (PyErr_Occurred())
		return -1;
	PyObject *tr = PyDict_GetItemWithError(c->tracks, cookie);
	if (!tr && PyErr_Occurred())
		return -1;
	long tr_kind = tr ? PyLong_AsLong(tget(tr, TS_KIND)) : T.kind_live;
	if (kind == T.kind_tw && tr_kind != T.kind_closed) {	/* FlowEngine._apply_other's TIME_WAIT case */
		if (tr) {
			Py_INCREF(tr);
		} else {
			if (!(tr = new_track()))
				return -1;
			tset(tr, TS_BORN, it[S.i_now]);
			if (PyDict_SetItem(c->tracks, cookie, tr) < 0) {
				Py_DECREF(tr);
				return -1;
			}
		}
		int rc = to_tw(c, cookie, tr, v);
		Py_DECREF(tr);
		return rc;
	}
	if (kind != T.kind_live || tr_kind != T.kind_live)
		return call_method(c->eng, "_apply_other", cookie, it[T.i_kind], tr ? tr : Py_None, v);
	int rc = -1;
	if (tr) {
		Py_INCREF(tr);
	} else {
		if (!(tr = new_track()))
			return -1;
		tset(tr, TS_BORN, it[S.i_now]);
		if (c->first != Py_None) {
			/* the first walk's holders, by socket inode (it comes before cookies are made) */
			PyObject *owner = PyDict_GetItemWithError(c->first, it[T.i_ino]);
			if (!owner && PyErr_Occurred())
				goto out;
			tset(tr, TS_OWNER, owner ? owner : S.zero);
			tset(tr, TS_REFS, it[T.i_refs]);
		}
		if (PyDict_SetItem(c->tracks, cookie, tr) < 0)
			goto out;
	}
	tset(tr, TS_VALS, v);
	if (set_place(c, tr, it[S.i_netns]) < 0)
		goto out;
	if (!(flags & T.quiescent) && PySet_Add(c->watch, cookie) < 0)
		goto out;
	rc = decode_live(c, cookie, tr);
out:
	Py_DECREF(tr);
	return rc;
}

/* The engine's containers a pass works with, fetched once per call (a pass calls back into
 * the engine only through methods that never replace them). */
static const char *CTX_NAMES[] = {"_tracks", "_flows", "touched", "_watch", "_verify", "_no_counters",
				  "_redecode", "_pinfo", "_boot_offset", "_ns_count", "_by_pid", "_tw_due"};
#define CTX_N (sizeof(CTX_NAMES) / sizeof(CTX_NAMES[0]))

static PyObject **ctx_slot(struct live_ctx *c, size_t i)
{
	PyObject **at[CTX_N] = {&c->tracks, &c->flows, &c->touched, &c->watch, &c->verify, &c->no_counters,
				&c->redecode, &c->pinfo, &c->boot, &c->ns_count, &c->by_pid, &c->tw_due};
	return at[i];
}

static void ctx_close(struct live_ctx *c)
{
	for (size_t i = 0; i < CTX_N; i++)
		Py_CLEAR(*ctx_slot(c, i));
	Py_CLEAR(c->owners);
}

/* A pass that decoded a flow tells the engine its listing changed (FlowEngine._changed). */
static int ctx_changed(struct live_ctx *c)
{
	return c->changed ? PyObject_SetAttrString(c->eng, "_changed", Py_True) : 0;
}

static int ctx_open(struct live_ctx *c, const char *who)
{
	if (!T.ready) {
		PyErr_SetString(PyExc_RuntimeError, "_flow_decode.setup_tracks() was not called");
		return -1;
	}
	for (size_t i = 0; i < CTX_N; i++)
		if (!(*ctx_slot(c, i) = PyObject_GetAttrString(c->eng, CTX_NAMES[i]))) {
			ctx_close(c);
			return -1;
		}
	if (!PyDict_Check(c->tracks) || !PyDict_Check(c->flows) || !PyDict_Check(c->pinfo) || !PySet_Check(c->touched) ||
	    !PySet_Check(c->watch) || !PySet_Check(c->verify) || !PySet_Check(c->no_counters) ||
	    !PySet_Check(c->redecode) || !PyDict_Check(c->ns_count) || !PyDict_Check(c->by_pid) ||
	    !PyList_Check(c->tw_due) || (c->first != Py_None && !PyDict_Check(c->first))) {
		PyErr_Format(PyExc_TypeError, "%s: the engine's containers are not dicts and sets", who);
		ctx_close(c);
		return -1;
	}
	return 0;
}

/* apply_live(records, engine, first): FlowEngine._apply's pass over a list of records. */
static PyObject *apply_live(PyObject *self, PyObject *args)
{
	PyObject *recs;
	struct live_ctx c = {0};
	PyObject *ret = NULL;

	if (!PyArg_ParseTuple(args, "O!OO", &PyList_Type, &recs, &c.eng, &c.first) || ctx_open(&c, "apply_live") < 0)
		return NULL;
	for (Py_ssize_t i = 0; i < PyList_GET_SIZE(recs); i++) {
		PyObject *v = PyList_GET_ITEM(recs, i);
		Py_INCREF(v);
		int rc = apply_one(&c, v);
		Py_DECREF(v);
		if (rc < 0)
			goto out;
	}
	if (ctx_changed(&c) < 0)
		goto out;
	ret = Py_NewRef(Py_None);
out:
	ctx_close(&c);
	return ret;
}

/* apply_finals(finals, engine, lookups_ok) -> cookies to look up: FlowEngine._apply_finals'
 * pass over final records (py_apply_finals in flows.py). A final record closes its flow,
 * except where the kernel may keep a TIME_WAIT or FIN_WAIT2 end (returned: the engine looks
 * those up); a late read and a final record after the walk saw the kernel's end go to the
 * engine's _final_other. */
/* The engine's queue of closed flows and the poll until which a flow closed now stays listed
 * (_polls + closed_keep_polls): both new references, NULL on error. */
static PyObject *closing_due(PyObject *eng, PyObject **closing)
{
	PyObject *polls = NULL, *keep = NULL, *due = NULL;
	if ((*closing = PyObject_GetAttrString(eng, "_closing")) && (polls = PyObject_GetAttrString(eng, "_polls")) &&
	    (keep = PyObject_GetAttrString(eng, "closed_keep_polls")))
		due = PyNumber_Add(polls, keep);
	Py_XDECREF(polls);
	Py_XDECREF(keep);
	if (!due)
		Py_CLEAR(*closing);
	return due;
}

/* FlowEngine._close of a track the caller holds: listed closed until poll `due`. */
static int close_track(struct live_ctx *c, PyObject *closing, PyObject *due, PyObject *cookie, PyObject *tr)
{
	PyObject *kc = PyLong_FromLong(T.kind_closed), *entry = atomic_pair(due, cookie);
	if (!kc || !entry) {
		Py_XDECREF(kc);
		Py_XDECREF(entry);
		return -1;
	}
	tset(tr, TS_KIND, kc);
	Py_DECREF(kc);
	tset(tr, TS_TW, T.zero_f);
	PyObject *r = NULL;
	if (PySet_Discard(c->watch, cookie) >= 0 && PySet_Discard(c->verify, cookie) >= 0)
		r = PyObject_CallMethodOneArg(closing, T.append_s, entry);
	Py_DECREF(entry);
	if (!r)
		return -1;
	Py_DECREF(r);
	return decode_live(c, cookie, tr);
}

static PyObject *apply_finals(PyObject *self, PyObject *args)
{
	PyObject *recs, *closing = NULL, *due = NULL, *checks = NULL, *ret = NULL;
	struct live_ctx c = {.first = Py_None};
	int lookups_ok;

	if (!PyArg_ParseTuple(args, "O!Op", &PyList_Type, &recs, &c.eng, &lookups_ok) ||
	    ctx_open(&c, "apply_finals") < 0)
		return NULL;
	if (!(due = closing_due(c.eng, &closing)) || !(checks = PyList_New(0)))
		goto out;
	for (Py_ssize_t i = 0; i < PyList_GET_SIZE(recs); i++) {
		PyObject *v = PyList_GET_ITEM(recs, i);
		if (whole(v, S.record_len, "apply_finals", "record") < 0)
			goto out;
		PyObject *const *it = ((PyTupleObject *)v)->ob_item;
		PyObject *cookie = it[S.i_cookie];
		long kind = PyLong_AsLong(it[T.i_kind]), state = PyLong_AsLong(it[T.i_state]);
		unsigned long flags = PyLong_AsUnsignedLong(it[T.i_flags]);
		if (PyErr_Occurred())
			goto out;
		Py_INCREF(v);
		PyObject *tr = PyDict_GetItemWithError(c.tracks, cookie);
		int rc = -1;
		if (tr) {
			Py_INCREF(tr);
		} else {
			if (PyErr_Occurred() || !(tr = new_track()))
				goto one_done;
			tset(tr, TS_BORN, it[S.i_now]);
			if (PyDict_SetItem(c.tracks, cookie, tr) < 0)
				goto one_done;
		}
		if (kind == T.kind_late || PyLong_AsLong(tget(tr, TS_KIND)) == T.kind_tw) {
			rc = call_method(c.eng, "_final_other", cookie, tr, v, NULL);
			goto one_done;
		}
		tset(tr, TS_VALS, v);
		if (set_place(&c, tr, it[S.i_netns]) < 0)
			goto one_done;
		if ((state == T.st_fin_wait1 || state == T.st_fin_wait2 || state == T.st_closing) && lookups_ok &&
		    !(flags & (T.reset_rcvd | T.timed_out))) {
			rc = PyList_Append(checks, cookie);
			goto one_done;
		}
		rc = close_track(&c, closing, due, cookie, tr);
one_done:
		Py_XDECREF(tr);
		Py_DECREF(v);
		if (rc < 0)
			goto out;
	}
	if (ctx_changed(&c) < 0)
		goto out;
	ret = Py_NewRef(checks);
out:
	ctx_close(&c);
	Py_XDECREF(closing);
	Py_XDECREF(due);
	Py_XDECREF(checks);
	return ret;
}

/* tw_pass(records, engine) -> cookies found: the lookups of ends the kernel may keep
 * (FlowEngine._apply_finals), each TIME_WAIT or FIN_WAIT2 end found applied as _to_tw does. */
static PyObject *tw_pass(PyObject *self, PyObject *args)
{
	PyObject *recs, *found = NULL, *ret = NULL;
	struct live_ctx c = {.first = Py_None};

	if (!PyArg_ParseTuple(args, "O!O", &PyList_Type, &recs, &c.eng) || ctx_open(&c, "tw_pass") < 0)
		return NULL;
	if (!(found = PySet_New(NULL)))
		goto out;
	for (Py_ssize_t i = 0; i < PyList_GET_SIZE(recs); i++) {
		PyObject *v = PyList_GET_ITEM(recs, i);
		if (whole(v, S.record_len, "tw_pass", "record") < 0)
			goto out;
		PyObject *cookie = PyTuple_GET_ITEM(v, S.i_cookie);
		long kind = PyLong_AsLong(PyTuple_GET_ITEM(v, T.i_kind));
		if (kind == -1 && PyErr_Occurred())
			goto out;
		PyObject *tr = PyDict_GetItemWithError(c.tracks, cookie);
		if (!tr) {
			if (PyErr_Occurred())
				goto out;
			continue;
		}
		if (kind != T.kind_tw)
			continue;
		Py_INCREF(tr);
		Py_INCREF(v);
		int rc = to_tw(&c, cookie, tr, v);
		Py_DECREF(v);
		Py_DECREF(tr);
		if (rc < 0 || PySet_Add(found, cookie) < 0)
			goto out;
	}
	if (ctx_changed(&c) < 0)
		goto out;
	ret = Py_NewRef(found);
out:
	ctx_close(&c);
	Py_XDECREF(found);
	return ret;
}

/* ---- The flow engine's pass over notices (FlowEngine._take_notices) --------------------
 *
 * Under a churn of 10,000 connections a second, a poll takes ~20,000 notices: a socket to
 * look up (DIRTY) and the process that accepted or connected it (OWNER). Those two are
 * applied here; exec, exit and fork go, in order, to the engine's _notice_other.
 * py_take_notices in flows.py is the same pass in Python (tests/unit/test_flow_apply_c.py). */

static struct {
	Py_ssize_t i_kind, i_netns, i_pid, i_sport, i_dport, i_family, i_v4, i_saddr, i_daddr, i_comm, len;
	Py_ssize_t w_cookie, w_sport, w_dport, w_v4, w_saddr, w_daddr, w_size;
	long dirty, owner;
	PyObject *note_s, *other_s;
	int ready;
} NT;

/* setup_notices(positions, want_offsets, want_size, consts): where a notice tuple's fields
 * are (flow_layout.N) and where a struct flow_want's members go (the FlowWant mirror, which
 * is checked against the object's BTF at load). */
static PyObject *setup_notices(PyObject *self, PyObject *args)
{
	PyObject *positions, *want, *consts;
	Py_ssize_t want_size;
	int ok = 1;

	if (!PyArg_ParseTuple(args, "O!O!nO!", &PyDict_Type, &positions, &PyDict_Type, &want, &want_size,
			      &PyDict_Type, &consts))
		return NULL;
	struct { Py_ssize_t *at; const char *name; } pos[] = {
		{&NT.i_kind, "kind"}, {&NT.i_netns, "netns"}, {&NT.i_pid, "pid"}, {&NT.i_sport, "sport"},
		{&NT.i_dport, "dport"}, {&NT.i_family, "family"}, {&NT.i_v4, "lookup_v4"}, {&NT.i_saddr, "saddr"},
		{&NT.i_daddr, "daddr"}, {&NT.i_comm, "comm"},
	}, off[] = {
		{&NT.w_cookie, "cookie"}, {&NT.w_sport, "sport"}, {&NT.w_dport, "dport"}, {&NT.w_v4, "lookup_v4"},
		{&NT.w_saddr, "saddr"}, {&NT.w_daddr, "daddr"},
	};
	NT.len = 0;
	for (size_t i = 0; i < sizeof(pos) / sizeof(pos[0]); i++) {
		if ((*pos[i].at = index_arg(positions, pos[i].name)) < 0)
			return NULL;
		if (*pos[i].at + 1 > NT.len)
			NT.len = *pos[i].at + 1;
	}
	NT.w_size = want_size;
	for (size_t i = 0; i < sizeof(off) / sizeof(off[0]); i++) {
		if ((*off[i].at = index_arg(want, off[i].name)) < 0)
			return NULL;
		Py_ssize_t width = off[i].at == &NT.w_cookie ? 8 : off[i].at == &NT.w_saddr || off[i].at == &NT.w_daddr ? 16 : 2;
		if (*off[i].at + width > want_size) {
			PyErr_SetString(PyExc_ValueError, "a want member outside the want");
			return NULL;
		}
	}
	NT.dirty = (long)const_of(consts, "NOTE_DIRTY", &ok);
	NT.owner = (long)const_of(consts, "NOTE_OWNER", &ok);
	if (!ok || PyErr_Occurred())
		return NULL;
	if (!NT.note_s && !(NT.note_s = PyUnicode_InternFromString("note")))
		return NULL;
	if (!NT.other_s && !(NT.other_s = PyUnicode_InternFromString("_notice_other")))
		return NULL;
	NT.ready = 1;
	Py_RETURN_NONE;
}

static void put_le(char *p, unsigned long long v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (char)(v >> (8 * i));
}

/* flows._want: a struct flow_want, IPv4 in the first four bytes as the lookup reads it
 * (`what` names the addresses' owner in the error). */
static PyObject *pack_want(unsigned long long cookie, unsigned long sport, unsigned long dport, long family,
			   int mapped, PyObject *sa, PyObject *da, const char *what)
{
	if (!PyBytes_CheckExact(sa) || !PyBytes_CheckExact(da) || PyBytes_GET_SIZE(sa) != 16 || PyBytes_GET_SIZE(da) != 16) {
		PyErr_Format(PyExc_ValueError, "a %s's addresses are 16 bytes", what);
		return NULL;
	}
	PyObject *w = PyBytes_FromStringAndSize(NULL, NT.w_size);
	if (!w)
		return NULL;
	char *p = PyBytes_AS_STRING(w);
	memset(p, 0, NT.w_size);
	put_le(p + NT.w_cookie, cookie, 8);
	put_le(p + NT.w_sport, sport, 2);
	put_le(p + NT.w_dport, dport, 2);
	put_le(p + NT.w_v4, family == 2 || mapped, 2);
	int v4_in_v6 = family != 2 && mapped;
	memcpy(p + NT.w_saddr, PyBytes_AS_STRING(sa) + (v4_in_v6 ? 12 : 0), v4_in_v6 ? 4 : 16);
	memcpy(p + NT.w_daddr, PyBytes_AS_STRING(da) + (v4_in_v6 ? 12 : 0), v4_in_v6 ? 4 : 16);
	return w;
}

/* flows._want_of_notice: the struct flow_want that looks a noticed socket up. */
static PyObject *want_of(PyObject *const *it)
{
	unsigned long long cookie = PyLong_AsUnsignedLongLong(it[0]);
	unsigned long sport = PyLong_AsUnsignedLong(it[NT.i_sport]), dport = PyLong_AsUnsignedLong(it[NT.i_dport]);
	long family = PyLong_AsLong(it[NT.i_family]);
	int mapped = PyObject_IsTrue(it[NT.i_v4]);
	if (PyErr_Occurred() || mapped < 0)
		return NULL;
	return pack_want(cookie, sport, dport, family, mapped, it[NT.i_saddr], it[NT.i_daddr], "notice");
}

/* flows._want_of_record: the struct flow_want that looks up the socket of a record. */
static PyObject *want_of_record(PyObject *const *it)
{
	unsigned long long cookie = PyLong_AsUnsignedLongLong(it[S.i_cookie]);
	unsigned long sport = PyLong_AsUnsignedLong(it[S.i_sport]), dport = PyLong_AsUnsignedLong(it[S.i_dport]);
	unsigned long flags = PyLong_AsUnsignedLong(it[T.i_flags]);
	long family = PyLong_AsLong(it[S.i_family]);
	if (PyErr_Occurred())
		return NULL;
	return pack_want(cookie, sport, dport, family, (flags & T.lookup_v4) != 0, it[S.i_saddr], it[S.i_daddr],
			 "record");
}

/* A track's want (borrowed), made from its record when no notice gave one and kept; empty
 * when neither says where the socket is; NULL on error. */
static PyObject *track_want(PyObject *tr)
{
	PyObject *want = tget(tr, TS_WANT), *vals = tget(tr, TS_VALS);
	int has = PyObject_IsTrue(want);
	if (has < 0)
		return NULL;
	if (has || vals == Py_None)
		return want;
	if (!PyTuple_Check(vals) || PyTuple_GET_SIZE(vals) < S.record_len) {
		PyErr_SetString(PyExc_ValueError, "a track's values are not a record");
		return NULL;
	}
	PyObject *w = want_of_record(((PyTupleObject *)vals)->ob_item);
	if (!w)
		return NULL;
	tset(tr, TS_WANT, w);
	Py_DECREF(w);
	return tget(tr, TS_WANT);
}

/* fn(item, ctx) for each item of `iterable`, until one fails (-1). */
static int for_each(PyObject *iterable, int (*fn)(PyObject *item, void *ctx), void *ctx)
{
	PyObject *it = PyObject_GetIter(iterable), *item;
	if (!it)
		return -1;
	int rc = 0;
	while (rc == 0 && (item = PyIter_Next(it))) {
		rc = fn(item, ctx);
		Py_DECREF(item);
	}
	Py_DECREF(it);
	return rc < 0 || PyErr_Occurred() ? -1 : 0;
}

static int tracks_ready(const char *who)
{
	if (T.track && NT.ready)
		return 0;
	PyErr_Format(PyExc_RuntimeError, "%s: setup_tracks and setup_notices first", who);
	return -1;
}

struct wants_ctx {
	PyObject *tracks, *out;
};

static int want_one(PyObject *cookie, void *ctx)
{
	struct wants_ctx *w = ctx;
	PyObject *tr = PyDict_GetItemWithError(w->tracks, cookie);
	if (!tr)
		return PyErr_Occurred() ? -1 : 0;
	PyObject *want = track_want(tr);
	if (!want)
		return -1;
	if (!PyBytes_Check(want) || !PyBytes_GET_SIZE(want))
		return 0;
	PyObject *ns = tget(tr, TS_NETNS);
	PyObject *lst = PyDict_GetItemWithError(w->out, ns);
	if (!lst) {
		if (PyErr_Occurred() || !(lst = PyList_New(0)))
			return -1;
		int bad = PyDict_SetItem(w->out, ns, lst) < 0;
		Py_DECREF(lst);
		if (bad)
			return -1;
	}
	return PyList_Append(lst, want);
}

/* wants_by_ns(tracks, cookies) -> {netns: [want, ...]}: FlowEngine._lookup's grouping
 * (py_wants_by_ns in flows.py); a track without a want gets its record's, kept. */
static PyObject *wants_by_ns(PyObject *self, PyObject *args)
{
	struct wants_ctx w;
	PyObject *cookies;
	if (!PyArg_ParseTuple(args, "O!O", &PyDict_Type, &w.tracks, &cookies) || tracks_ready("wants_by_ns") < 0 ||
	    !(w.out = PyDict_New()))
		return NULL;
	if (for_each(cookies, want_one, &w) < 0)
		Py_CLEAR(w.out);
	return w.out;
}

/* A track's place for tw_sweep: (netns, its want without the cookie), a new reference; None
 * when neither a notice nor a record says where it is. The want made from the record is kept. */
static PyObject *place_of(PyObject *tr)
{
	PyObject *want = track_want(tr);
	if (!want)
		return NULL;
	if (PyObject_IsTrue(want) == 0)
		Py_RETURN_NONE;
	if (!PyBytes_Check(want) || PyBytes_GET_SIZE(want) < 8) {
		PyErr_SetString(PyExc_ValueError, "tw_sweep: a want is a struct flow_want");
		return NULL;
	}
	PyObject *rest = PyBytes_FromStringAndSize(PyBytes_AS_STRING(want) + 8, PyBytes_GET_SIZE(want) - 8);
	PyObject *key = rest ? PyTuple_Pack(2, tget(tr, TS_NETNS), rest) : NULL;
	Py_XDECREF(rest);
	if (key)
		PyObject_GC_UnTrack(key);
	return key;
}

/* When a kept end stopped being a full socket: its record's time (monotonic ns), or -1. */
static long long ended_ns(PyObject *tr)
{
	PyObject *vals = tget(tr, TS_VALS);
	if (!PyTuple_Check(vals) || PyTuple_GET_SIZE(vals) < S.record_len)
		return -1;
	long long t = PyLong_AsLongLong(PyTuple_GET_ITEM(vals, S.i_now));
	return t == -1 && PyErr_Occurred() ? -2 : t;
}

struct sweep_ctx {
	PyObject *tracks, *at, *keys, *kills;
};

/* The track of a cookie (borrowed, NULL if none) and whether it is a kept end; -1 on error. */
static int kept_track(struct sweep_ctx *w, PyObject *c, PyObject **tr)
{
	*tr = PyDict_GetItemWithError(w->tracks, c);
	if (!*tr)
		return PyErr_Occurred() ? -1 : 0;
	long kind = PyLong_AsLong(tget(*tr, TS_KIND));
	return kind == -1 && PyErr_Occurred() ? -1 : kind == T.kind_tw;
}

/* First pass: a kept end touched this poll goes into the index (of two ends of one place, the
 * one that ended first is gone); a socket that is no longer one leaves it. */
static int index_one(PyObject *c, void *ctx)
{
	struct sweep_ctx *w = ctx;
	PyObject *tr, *k;
	int kept = kept_track(w, c, &tr);
	if (kept < 0)
		return -1;
	if (!kept) {
		if (!(k = PyDict_GetItemWithError(w->keys, c)))
			return PyErr_Occurred() ? -1 : 0;
		Py_INCREF(k);
		PyObject *there = PyDict_GetItemWithError(w->at, k);
		int same = there ? PyObject_RichCompareBool(there, c, Py_EQ) : PyErr_Occurred() ? -1 : 0;
		int rc = same < 0 || (same && PyDict_DelItem(w->at, k) < 0) || PyDict_DelItem(w->keys, c) < 0 ? -1 : 0;
		Py_DECREF(k);
		return rc;
	}
	int known = PyDict_Contains(w->keys, c);
	if (known)
		return known < 0 ? -1 : 0;
	if (!(k = place_of(tr)))
		return -1;
	int rc = -1;
	if (k == Py_None) {
		rc = 0;
		goto out;
	}
	PyObject *old = PyDict_GetItemWithError(w->at, k);
	if (!old && PyErr_Occurred())
		goto out;
	if (old) {
		Py_INCREF(old);
		PyObject *otr = PyDict_GetItemWithError(w->tracks, old);
		long long t_old = otr ? ended_ns(otr) : -1, t_new = ended_ns(tr);
		int bad = t_old == -2 || t_new == -2 || PyErr_Occurred();
		if (!bad && t_new < t_old) {	/* this one ended first (its record came late) */
			Py_DECREF(old);
			rc = PyList_Append(w->kills, c);
			goto out;
		}
		bad = bad || PyDict_DelItem(w->keys, old) < 0 || (otr && PyList_Append(w->kills, old) < 0);
		Py_DECREF(old);
		if (bad)
			goto out;
	}
	rc = PyDict_SetItem(w->at, k, c) < 0 || PyDict_SetItem(w->keys, c, k) < 0 ? -1 : 0;
out:
	Py_DECREF(k);
	return rc;
}

/* Second pass: a socket born after a kept end of its place ended took the place; the kernel
 * dropped that end. */
static int taken_one(PyObject *c, void *ctx)
{
	struct sweep_ctx *w = ctx;
	PyObject *tr;
	int kept = kept_track(w, c, &tr);
	if (kept != 0 || !tr || PyDict_GET_SIZE(w->at) == 0)
		return kept < 0 ? -1 : 0;
	PyObject *k = place_of(tr);
	if (!k)
		return -1;
	int rc = -1;
	PyObject *old = k == Py_None ? NULL : PyDict_GetItemWithError(w->at, k);
	if (!old) {
		rc = PyErr_Occurred() ? -1 : 0;
		goto out;
	}
	PyObject *otr = PyDict_GetItemWithError(w->tracks, old);
	long long born = PyLong_AsLongLong(tget(tr, TS_BORN)), t_old = otr ? ended_ns(otr) : -1;
	if (PyErr_Occurred() || t_old == -2)
		goto out;
	rc = 0;
	if (born > t_old) {
		Py_INCREF(old);
		if (PyList_Append(w->kills, old) < 0 || PyDict_DelItem(w->keys, old) < 0 || PyDict_DelItem(w->at, k) < 0)
			rc = -1;
		Py_DECREF(old);
	}
out:
	Py_DECREF(k);
	return rc;
}

/* tw_sweep(tracks, touched, at, keys) -> cookies: FlowEngine._sweep_kept's pass (py_tw_sweep in
 * flows.py). `at` maps each kept end's place to its cookie, `keys` the cookie back. A place holds
 * one socket in the kernel: a socket born after a kept end of its place ended (a SYN that
 * reused the 4-tuple, a connect that reused a TIME_WAIT port), or a later kept end of the same
 * place, means the kernel dropped the older end. Those ends are returned, to close. The kept
 * ends are indexed first, so a socket and the end it replaced may come in one poll. */
static PyObject *tw_sweep(PyObject *self, PyObject *args)
{
	struct sweep_ctx w;
	PyObject *touched;
	if (!PyArg_ParseTuple(args, "O!OO!O!", &PyDict_Type, &w.tracks, &touched, &PyDict_Type, &w.at, &PyDict_Type,
			      &w.keys) || tracks_ready("tw_sweep") < 0 || !(w.kills = PyList_New(0)))
		return NULL;
	if (for_each(touched, index_one, &w) < 0 || for_each(touched, taken_one, &w) < 0)
		Py_CLEAR(w.kills);
	return w.kills;
}

/* close_kept(cookies, engine): FlowEngine._sweep_kept's closing of the kept ends tw_sweep
 * found dropped (py_close_kept in flows.py): each still kept is closed as _gone closes it. */
static PyObject *close_kept(PyObject *self, PyObject *args)
{
	PyObject *kills, *closing = NULL, *due = NULL, *ret = NULL;
	struct live_ctx c = {.first = Py_None};
	if (!PyArg_ParseTuple(args, "O!O", &PyList_Type, &kills, &c.eng) || ctx_open(&c, "close_kept") < 0)
		return NULL;
	if (!(due = closing_due(c.eng, &closing)))
		goto out;
	for (Py_ssize_t i = 0; i < PyList_GET_SIZE(kills); i++) {
		PyObject *cookie = PyList_GET_ITEM(kills, i);
		PyObject *tr = PyDict_GetItemWithError(c.tracks, cookie);
		if (!tr) {
			if (PyErr_Occurred())
				goto out;
			continue;
		}
		Py_INCREF(tr);
		Py_INCREF(cookie);
		long kind = PyLong_AsLong(tget(tr, TS_KIND));
		int rc = 0;
		if (kind == -1 && PyErr_Occurred())
			rc = -1;
		else if (kind == T.kind_tw)
			rc = tget(tr, TS_VALS) == Py_None ? call_method(c.eng, "_gone", cookie, tr, NULL, NULL)
							  : close_track(&c, closing, due, cookie, tr);
		Py_DECREF(cookie);
		Py_DECREF(tr);
		if (rc < 0)
			goto out;
	}
	if (ctx_changed(&c) < 0)
		goto out;
	ret = Py_NewRef(Py_None);
out:
	ctx_close(&c);
	Py_XDECREF(closing);
	Py_XDECREF(due);
	return ret;
}

/* FlowEngine._track(cookie, now_ns): a new reference. */
static PyObject *track_of(struct live_ctx *c, PyObject *cookie, PyObject *now_ns)
{
	PyObject *tr = PyDict_GetItemWithError(c->tracks, cookie);
	if (tr)
		return Py_NewRef(tr);
	if (PyErr_Occurred() || !(tr = new_track()))
		return NULL;
	tset(tr, TS_BORN, now_ns);
	if (PyDict_SetItem(c->tracks, cookie, tr) < 0) {
		Py_DECREF(tr);
		return NULL;
	}
	return tr;
}

static int set_update(PyObject *set, PyObject *items)
{
	PyObject *it = PyObject_GetIter(items), *x;
	if (!it)
		return -1;
	while ((x = PyIter_Next(it))) {
		int rc = PySet_Add(set, x);
		Py_DECREF(x);
		if (rc < 0)
			break;
	}
	Py_DECREF(it);
	return PyErr_Occurred() ? -1 : 0;
}

/* One OWNER notice. The owners' note() is asked once per (pid, comm) in a row: asked again
 * with the same names it changes nothing and answers False (an exec between the two would
 * have gone to _notice_other, which forgets the last one). */
static int owner_notice(struct live_ctx *c, PyObject *owners, PyObject *const *it, PyObject *cookie,
			PyObject *now_ns, PyObject **last_pid, PyObject **last_comm)
{
	PyObject *pid = it[NT.i_pid], *raw = it[NT.i_comm];
	int same = *last_pid && *last_comm ? PyObject_RichCompareBool(pid, *last_pid, Py_EQ) : 0;
	if (same > 0)
		same = PyObject_RichCompareBool(raw, *last_comm, Py_EQ);
	if (same < 0)
		return -1;
	if (!same) {
		PyObject *comm = PyObject_CallOneArg(T.comm_of, raw);
		PyObject *r = comm ? PyObject_CallMethodObjArgs(owners, NT.note_s, pid, comm, NULL) : NULL;
		Py_XDECREF(comm);
		int changed = r ? PyObject_IsTrue(r) : -1;
		Py_XDECREF(r);
		if (changed < 0)
			return -1;
		Py_XSETREF(*last_pid, Py_NewRef(pid));
		Py_XSETREF(*last_comm, Py_NewRef(raw));
		if (changed) {
			PyObject *pids = PyDict_GetItemWithError(c->by_pid, pid);
			if ((!pids && PyErr_Occurred()) || (pids && set_update(c->redecode, pids) < 0))
				return -1;
		}
	}
	PyObject *tr = track_of(c, cookie, now_ns);
	if (!tr)
		return -1;
	tset(tr, TS_OWNER, pid);
	Py_DECREF(tr);
	return PySet_Add(c->redecode, cookie);
}

/* take_notices(notices, finals, engine, now_ns): FlowEngine._take_notices. */
static PyObject *take_notices(PyObject *self, PyObject *args)
{
	PyObject *notices, *finals, *now_ns, *ended = NULL, *owners = NULL, *last_pid = NULL, *last_comm = NULL,
		 *ret = NULL;
	struct live_ctx c = {.first = Py_None};

	if (!NT.ready) {
		PyErr_SetString(PyExc_RuntimeError, "_flow_decode.setup_notices() was not called");
		return NULL;
	}
	if (!PyArg_ParseTuple(args, "O!O!OO", &PyList_Type, &notices, &PyList_Type, &finals, &c.eng, &now_ns) ||
	    ctx_open(&c, "take_notices") < 0)
		return NULL;
	if (!(owners = PyObject_GetAttrString(c.eng, "owners")) || !(ended = PySet_New(NULL)))
		goto out;
	for (Py_ssize_t i = 0; i < PyList_GET_SIZE(finals); i++) {
		PyObject *v = PyList_GET_ITEM(finals, i);
		if (whole(v, S.record_len, "take_notices", "record") < 0)
			goto out;
		if (PySet_Add(ended, PyTuple_GET_ITEM(v, S.i_cookie)) < 0)
			goto out;
	}
	for (Py_ssize_t i = 0; i < PyList_GET_SIZE(notices); i++) {
		PyObject *v = PyList_GET_ITEM(notices, i);
		if (whole(v, NT.len, "take_notices", "notice") < 0)
			goto out;
		Py_INCREF(v);
		PyObject *const *it = ((PyTupleObject *)v)->ob_item;
		PyObject *cookie = it[0];
		long kind = PyLong_AsLong(it[NT.i_kind]);
		int rc = -1;
		if (kind == -1 && PyErr_Occurred()) {
			rc = -1;
		} else if (kind == NT.dirty) {
			int gone = PySet_Contains(ended, cookie);
			rc = gone < 0 ? -1 : 0;
			if (gone == 0) {
				PyObject *tr = track_of(&c, cookie, now_ns);
				rc = tr ? 0 : -1;
				if (tr && PyLong_AsLong(tget(tr, TS_KIND)) != T.kind_closed) {
					PyObject *want = PyErr_Occurred() ? NULL : want_of(it);
					rc = want && set_place_want(&c, tr, want, it[NT.i_netns]) == 0 &&
					     PySet_Add(c.watch, cookie) == 0 ? 0 : -1;
					Py_XDECREF(want);
				} else if (PyErr_Occurred()) {
					rc = -1;
				}
				Py_XDECREF(tr);
			}
		} else if (kind == NT.owner) {
			rc = owner_notice(&c, owners, it, cookie, now_ns, &last_pid, &last_comm);
		} else {
			Py_CLEAR(last_pid);
			Py_CLEAR(last_comm);
			PyObject *r = PyObject_CallMethodOneArg(c.eng, NT.other_s, v);
			rc = r ? 0 : -1;
			Py_XDECREF(r);
		}
		Py_DECREF(v);
		if (rc < 0)
			goto out;
	}
	ret = Py_NewRef(Py_None);
out:
	ctx_close(&c);
	Py_XDECREF(owners);
	Py_XDECREF(ended);
	Py_XDECREF(last_pid);
	Py_XDECREF(last_comm);
	return ret;
}

/* ---- FlowJoin's pass over the flows that changed (join.py) ------------------------------
 * Under a churn of 10,000 connections a second ~40,000 flows change a poll and those that
 * failed get their failures attached: ~3-5 us each in Python. py_join_pass is the same in
 * Python; tests/unit/test_flow_join.py compares both. */

static Py_ssize_t J_LATENCY = -1, J_FAIL[4];	/* Flow field positions: latency; drops, resets_sent, ... */
static const char *J_FAIL_NAMES[4] = {"drops", "resets_sent", "resets_received", "last_reset_reason"};

static int join_ready(void)
{
	if (J_LATENCY >= 0)
		return 0;
	PyObject *at = PyDict_GetItemString(S.index, "latency");
	if (!at)
		goto missing;
	Py_ssize_t lat = PyLong_AsSsize_t(at);
	for (int k = 0; k < 4; k++) {
		if (!(at = PyDict_GetItemString(S.index, J_FAIL_NAMES[k])))
			goto missing;
		J_FAIL[k] = PyLong_AsSsize_t(at);
	}
	J_LATENCY = lat;
	return 0;
missing:
	PyErr_SetString(PyExc_TypeError, "join: Flow has no latency or failure fields");
	return -1;
}

/* join._joined(f, lat, ff): the flow with its stages and its failures. */
static PyObject *joined(PyObject *f, PyObject *lat, PyObject *ff)
{
	PyObject *vals[4] = {0};
	if (ff != Py_None) {
		for (int k = 0; k < 4; k++)
			if (!(vals[k] = PyObject_GetAttrString(ff, J_FAIL_NAMES[k]))) {
				for (int j = 0; j < k; j++)
					Py_DECREF(vals[j]);
				return NULL;
			}
	}
	PyObject *g = alloc_flow();
	if (!g)
		goto out;
	for (Py_ssize_t i = 0; i < S.nfields; i++)
		put(g, i, Py_XNewRef(*(PyObject **)((char *)f + S.offset[i])));
	if (ff == Py_None || lat != Py_None) {
		PyObject **slot = (PyObject **)((char *)g + S.offset[J_LATENCY]);
		Py_XSETREF(*slot, Py_NewRef(lat));
	}
	if (ff != Py_None)
		for (int k = 0; k < 4; k++) {
			PyObject **slot = (PyObject **)((char *)g + S.offset[J_FAIL[k]]);
			Py_XSETREF(*slot, Py_NewRef(vals[k]));
		}
	untracked(g);
out:
	for (int k = 0; k < 4; k++)
		Py_XDECREF(vals[k]);
	return g;
}

/* d.pop(key, None) is not None */
static int pop_some(PyObject *d, PyObject *key)
{
	PyObject *v = PyDict_GetItemWithError(d, key);
	if (!v)
		return PyErr_Occurred() ? -1 : 0;
	int some = v != Py_None;
	return PyDict_DelItem(d, key) < 0 ? -1 : some;
}

/* The value of `key` in `d` if truthy, else `fallback` (borrowed): `d.get(key) or fallback`. */
static PyObject *get_or(PyObject *d, PyObject *key, PyObject *fallback, int *err)
{
	PyObject *v = PyDict_GetItemWithError(d, key);
	if (!v) {
		*err = PyErr_Occurred() != NULL;
		return fallback;
	}
	int t = PyObject_IsTrue(v);
	if (t < 0)
		*err = 1;
	return t > 0 ? v : fallback;
}

/* join_pass(ids, base, stages, failures, out, parts, new, gone) -> changed: FlowJoin.update's
 * loop; the flows it lists anew are appended to `new`, the ids it stops listing to `gone`. */
static PyObject *join_pass(PyObject *self, PyObject *args)
{
	PyObject *ids, *base, *stages, *failures, *out, *parts, *new, *gone, *it, *i;
	int changed = 0;

	if (!PyArg_ParseTuple(args, "OO!O!O!O!O!O!O!", &ids, &PyDict_Type, &base, &PyDict_Type, &stages, &PyDict_Type,
			      &failures, &PyDict_Type, &out, &PyDict_Type, &parts, &PyList_Type, &new, &PyList_Type,
			      &gone))
		return NULL;
	if (!ready() || join_ready() < 0 || !(it = PyObject_GetIter(ids)))
		return NULL;
	while ((i = PyIter_Next(it))) {
		int rc = -1, err = 0;
		PyObject *f = PyDict_GetItemWithError(base, i);
		if (!f) {
			int a, b;
			if (!PyErr_Occurred() && (a = pop_some(out, i)) >= 0 && (b = pop_some(parts, i)) >= 0 &&
			    (!a || PyList_Append(gone, i) == 0)) {
				changed |= a;
				rc = 0;
			}
			goto next;
		}
		Py_INCREF(f);
		PyObject *prev = PyDict_GetItemWithError(parts, i);
		if (!prev && PyErr_Occurred())
			goto next_f;
		if (prev && (!PyTuple_Check(prev) || PyTuple_GET_SIZE(prev) != 4)) {
			PyErr_SetString(PyExc_TypeError, "join: parts are (flow, stages, failures, joined)");
			goto next_f;
		}
		Py_XINCREF(prev);
		PyObject *lat = get_or(stages, i, prev ? PyTuple_GET_ITEM(prev, 1) : Py_None, &err);
		PyObject *ff = get_or(failures, i, prev ? PyTuple_GET_ITEM(prev, 2) : Py_None, &err);
		if (err)
			goto next_prev;
		if (lat == Py_None && ff == Py_None) {
			if (pop_some(parts, i) < 0)
				goto next_prev;
		} else if (prev && PyTuple_GET_ITEM(prev, 0) == f && PyTuple_GET_ITEM(prev, 1) == lat &&
			   PyTuple_GET_ITEM(prev, 2) == ff) {
			Py_SETREF(f, Py_NewRef(PyTuple_GET_ITEM(prev, 3)));
		} else {
			PyObject *g = joined(f, lat, ff);
			PyObject *entry = g ? PyTuple_Pack(4, f, lat, ff, g) : NULL;
			/* flows, the packet engine's stage tables and a FlowFailures: nothing there leads
			 * back to this tuple, and 40,000 of them under churn slowed every gen-2 pass */
			if (entry)
				PyObject_GC_UnTrack(entry);
			int bad = !entry || PyDict_SetItem(parts, i, entry) < 0;
			Py_XDECREF(entry);
			if (bad) {
				Py_XDECREF(g);
				goto next_prev;
			}
			Py_SETREF(f, g);
		}
		PyObject *shown = PyDict_GetItemWithError(out, i);
		if (!shown && PyErr_Occurred())
			goto next_prev;
		if (shown != f) {
			if (PyDict_SetItem(out, i, f) < 0 || PyList_Append(new, f) < 0)
				goto next_prev;
			changed = 1;
		}
		rc = 0;
next_prev:
		Py_XDECREF(prev);
next_f:
		Py_DECREF(f);
next:
		Py_DECREF(i);
		if (rc < 0) {
			Py_DECREF(it);
			return NULL;
		}
	}
	Py_DECREF(it);
	if (PyErr_Occurred())
		return NULL;
	return PyBool_FromLong(changed);
}

/* FlowEngine._forget(cookie) of a track the caller holds. */
static int forget(struct live_ctx *c, PyObject *cookie, PyObject *tr)
{
	int a, b;
	if ((a = pop_some(c->tracks, cookie)) < 0 || (b = pop_some(c->flows, cookie)) < 0 ||
	    PySet_Add(c->touched, cookie) < 0 || PySet_Discard(c->no_counters, cookie) < 0)
		return -1;
	PyObject *ns = tget(tr, TS_NETNS);
	int t = PyObject_IsTrue(ns);
	if (t < 0 || (t && count_add(c->ns_count, ns, -1) < 0))
		return -1;
	PyObject *f = tget(tr, TS_FLOW);
	if (f && f != Py_None) {
		PyObject *pid = *(PyObject **)((char *)f + S.offset[7]);	/* Flow.pid */
		if ((t = PyObject_IsTrue(pid)) < 0 || (t && repoint(c, cookie, pid, S.zero) < 0))
			return -1;
	}
	c->changed = 1;
	return 0;
}

/* expire_pass(engine): FlowEngine._expire's pass: closed flows whose polls to stay listed
 * are over are forgotten (py_expire_pass in flows.py). */
static PyObject *expire_pass(PyObject *self, PyObject *eng)
{
	PyObject *closing = NULL, *polls = NULL, *ret = NULL;
	struct live_ctx c = {.first = Py_None, .eng = eng};

	if (ctx_open(&c, "expire_pass") < 0)
		return NULL;
	if (!(closing = PyObject_GetAttrString(eng, "_closing")) || !(polls = PyObject_GetAttrString(eng, "_polls")))
		goto out;
	for (;;) {
		Py_ssize_t n = PyObject_Length(closing);
		if (n < 0)
			goto out;
		if (!n)
			break;
		PyObject *head = PySequence_GetItem(closing, 0);
		if (!head)
			goto out;
		if (!PyTuple_Check(head) || PyTuple_GET_SIZE(head) != 2) {
			Py_DECREF(head);
			PyErr_SetString(PyExc_TypeError, "expire_pass: closing holds (poll, cookie)");
			goto out;
		}
		int due = PyObject_RichCompareBool(PyTuple_GET_ITEM(head, 0), polls, Py_LT);
		if (due <= 0) {
			Py_DECREF(head);
			if (due < 0)
				goto out;
			break;
		}
		PyObject *r = PyObject_CallMethod(closing, "popleft", NULL);
		Py_XDECREF(r);
		PyObject *cookie = PyTuple_GET_ITEM(head, 1);
		PyObject *tr = r ? PyDict_GetItemWithError(c.tracks, cookie) : NULL;
		int rc = r && !PyErr_Occurred() ? 0 : -1;
		if (tr) {
			Py_INCREF(tr);
			long kind = PyLong_AsLong(tget(tr, TS_KIND));
			rc = kind == -1 && PyErr_Occurred() ? -1 : kind == T.kind_closed ? forget(&c, cookie, tr) : 0;
			Py_DECREF(tr);
		}
		Py_DECREF(head);
		if (rc < 0)
			goto out;
	}
	if (ctx_changed(&c) < 0)
		goto out;
	ret = Py_NewRef(Py_None);
out:
	ctx_close(&c);
	Py_XDECREF(closing);
	Py_XDECREF(polls);
	return ret;
}

static PyMethodDef methods[] = {
	{"setup_tracks", setup_tracks, METH_VARARGS, "Tell apply_live about the flow engine's track."},
	{"apply_live", apply_live, METH_VARARGS, "FlowEngine._apply's pass over a list of records."},
	{"apply_finals", apply_finals, METH_VARARGS, "FlowEngine._apply_finals' pass over final records."},
	{"tw_pass", tw_pass, METH_VARARGS, "FlowEngine._apply_finals' pass over the lookups of kept ends."},
	{"join_pass", join_pass, METH_VARARGS, "FlowJoin.update's pass over the flows that changed."},
	{"setup_notices", setup_notices, METH_VARARGS, "Tell take_notices about the notice and want layouts."},
	{"take_notices", take_notices, METH_VARARGS, "FlowEngine._take_notices' pass over a poll's notices."},
	{"expire_pass", expire_pass, METH_O, "FlowEngine._expire's pass over the closed flows due to go."},
	{"untrack", untrack, METH_O, "An object of a plain slotted class out of the cyclic collector's sight."},
	{"wants_by_ns", wants_by_ns, METH_VARARGS, "FlowEngine._lookup's wants, grouped by namespace."},
	{"tw_sweep", tw_sweep, METH_VARARGS, "FlowEngine._sweep_kept's pass: kept ends the kernel dropped."},
	{"close_kept", close_kept, METH_VARARGS, "FlowEngine._sweep_kept's closing of those ends."},
	{"pair", (PyCFunction)(void (*)(void))pair, METH_FASTCALL, "(a, b) of two numbers, untracked."},
	{"replaced", (PyCFunction)(void (*)(void))replaced, METH_FASTCALL,
	 "A record with one item replaced, untracked when it holds numbers and bytes only."},
	{"unpack_all", unpack_all, METH_VARARGS,
	 "Every record of a buffer unpacked by a struct.Struct, as untracked tuples."},
	{"setup", setup, METH_VARARGS, "Tell the decoder about model.Flow and the record layout."},
	{"new_flow", (PyCFunction)(void (*)(void))new_flow, METH_FASTCALL, "A Flow of its fields in order."},
	{"with_fields", (PyCFunction)(void (*)(void))with_fields, METH_VARARGS | METH_KEYWORDS,
	 "A copy of a Flow with some fields changed."},
	{"flow_of", (PyCFunction)(void (*)(void))flow_of, METH_FASTCALL, "The Flow of a record tuple."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "_flow_decode", "Records of bpf/flows.bpf.c to Flow objects, in C.", -1,
	methods,
};

PyMODINIT_FUNC PyInit__flow_decode(void)
{
	S.zero = PyLong_FromLong(0);
	S.empty_str = PyUnicode_FromString("");
	S.empty_tuple = PyTuple_New(0);
	if (!S.zero || !S.empty_str || !S.empty_tuple)
		return NULL;
	return PyModule_Create(&module);
}
