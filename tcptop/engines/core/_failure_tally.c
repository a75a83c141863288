/* The failure engine's per-socket tallies in C (failures.py: FailureEngine._take_counts and the
 * common case of _settle). Under a churn of connections reset by the thousand a second, each
 * poll adds ~10,000 sockets' counts and matches them to flows; in Python that cost ~6 us a
 * socket (~60 ms a poll here), in C well under one.
 *
 * The tallies stay failures._Sock objects (a slotted dataclass Python reads and writes too);
 * this module reads and writes their slots in place. failures.py keeps the Python twins
 * (py_take_counts, py_settle_flows), which tests/unit/test_failure_tally_c.py holds equal.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

/* _Sock's slots, in this order (setup() finds each one's offset). */
enum { K_DROPS, K_SENT, K_RECEIVED, K_SYNACK, K_SENT_REASONS, K_LAST_RESET, K_SHOWN, K_VERSION, K_N };
static const char *SLOT_NAMES[K_N] = {"drops", "resets_sent", "resets_received", "synack_retrans",
				      "sent_reasons", "last_reset", "shown", "version"};

static struct {
	PyTypeObject *type;	/* failures._Sock */
	PyObject *proto;	/* _Sock(): what a new tally starts from */
	Py_ssize_t slot[K_N];
	unsigned long rd_none, rd_sent;
	int ready;
} S;

#define EVENTS_SIZE 40	/* struct sock_events: u64 x4, u32 reason, u32 dir */
#define DROP_KEY_SIZE 16	/* struct sock_drop_key: u64 cookie, u32 reason, u32 pad */

static PyObject *sget(PyObject *t, int i)
{
	return *(PyObject **)((char *)t + S.slot[i]);
}

/* Slot i of a tally takes `v` (a new reference, stolen). */
static void sset(PyObject *t, int i, PyObject *v)
{
	Py_XSETREF(*(PyObject **)((char *)t + S.slot[i]), v);
}

static uint64_t u64_at(const char *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
}

static uint32_t u32_at(const char *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return v;
}

/* setup(Sock, rd_none, rd_sent) */
static PyObject *setup(PyObject *self, PyObject *args)
{
	PyObject *type;

	if (!PyArg_ParseTuple(args, "O!kk", &PyType_Type, &type, &S.rd_none, &S.rd_sent))
		return NULL;
	PyTypeObject *tp = (PyTypeObject *)type;
	if (tp->tp_dictoffset || tp->tp_weaklistoffset || !PyType_IS_GC(tp)) {
		PyErr_SetString(PyExc_TypeError, "the tally is not an object of a plain slotted class");
		return NULL;
	}
	for (int i = 0; i < K_N; i++) {
		PyObject *d = PyDict_GetItemString(tp->tp_dict, SLOT_NAMES[i]);
		if (!d || !PyObject_TypeCheck(d, &PyMemberDescr_Type) ||
		    ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
			PyErr_Format(PyExc_TypeError, "the tally's %s is not a slot", SLOT_NAMES[i]);
			return NULL;
		}
		S.slot[i] = ((PyMemberDescrObject *)d)->d_member->offset;
	}
	PyObject *proto = PyObject_CallNoArgs(type);
	if (!proto)
		return NULL;
	for (int i = 0; i < K_N; i++)
		if (!sget(proto, i)) {
			PyErr_Format(PyExc_TypeError, "the tally's __init__ leaves %s unset", SLOT_NAMES[i]);
			Py_DECREF(proto);
			return NULL;
		}
	Py_XSETREF(S.proto, proto);
	Py_XSETREF(S.type, (PyTypeObject *)Py_NewRef(type));
	S.ready = 1;
	Py_RETURN_NONE;
}

static int ready(void)
{
	if (!S.ready)
		PyErr_SetString(PyExc_RuntimeError, "_failure_tally.setup() was not called");
	return S.ready;
}

/* A new tally, as _Sock() makes it, out of the collector's sight (it holds numbers and
 * dicts of numbers: no cycle can go through it). */
static PyObject *new_sock(void)
{
	PyObject *t = S.type->tp_alloc(S.type, 0);
	if (!t)
		return NULL;
	for (int i = 0; i < K_N; i++)
		*(PyObject **)((char *)t + S.slot[i]) = Py_NewRef(sget(S.proto, i));
	if (PyObject_GC_IsTracked(t))
		PyObject_GC_UnTrack(t);
	return t;
}

/* socks[cookie], made on first use (borrowed). */
static PyObject *sock_of(PyObject *socks, PyObject *cookie)
{
	PyObject *t = PyDict_GetItemWithError(socks, cookie);
	if (t || PyErr_Occurred())
		return t;
	if (!(t = new_sock()))
		return NULL;
	int rc = PyDict_SetItem(socks, cookie, t);
	Py_DECREF(t);
	return rc < 0 ? NULL : t;
}

/* Slot i += n (a Python int). */
static int slot_add(PyObject *t, int i, uint64_t n)
{
	if (!n)
		return 0;
	PyObject *by = PyLong_FromUnsignedLongLong(n);
	PyObject *sum = by ? PyNumber_Add(sget(t, i), by) : NULL;
	Py_XDECREF(by);
	if (!sum)
		return -1;
	sset(t, i, sum);
	return 0;
}

/* failures._added: slot i (a dict, made on first use, or None) with n added under key. */
static int slot_added(PyObject *t, int i, unsigned long key, uint64_t n)
{
	PyObject *d = sget(t, i), *k = PyLong_FromUnsignedLong(key), *sum = NULL;
	int rc = -1;
	if (!k)
		return -1;
	if (d == Py_None) {
		PyObject *fresh = PyDict_New();
		if (!fresh)
			goto out;
		sset(t, i, fresh);
		d = fresh;
	}
	PyObject *had = PyDict_GetItemWithError(d, k);
	if (!had && PyErr_Occurred())
		goto out;
	PyObject *by = PyLong_FromUnsignedLongLong(n);
	if (!by)
		goto out;
	sum = had ? PyNumber_Add(had, by) : Py_NewRef(by);
	Py_DECREF(by);
	if (sum)
		rc = PyDict_SetItem(d, k, sum);
out:
	Py_XDECREF(sum);
	Py_DECREF(k);
	return rc;
}

/* One entry of sock_events: the loop body of _take_counts. */
static int take_event(PyObject *t, const char *v)
{
	uint64_t sent = u64_at(v), received = u64_at(v + 8), synack = u64_at(v + 16), ns = u64_at(v + 24);
	unsigned long reason = u32_at(v + 32), direction = u32_at(v + 36);

	if (slot_add(t, K_SENT, sent) < 0 || slot_add(t, K_RECEIVED, received) < 0 || slot_add(t, K_SYNACK, synack) < 0)
		return -1;
	if (sent && slot_added(t, K_SENT_REASONS, direction == S.rd_sent ? reason : 0, sent) < 0)
		return -1;
	if (direction != S.rd_none) {
		PyObject *last = sget(t, K_LAST_RESET);
		if (!PyTuple_Check(last) || PyTuple_GET_SIZE(last) != 3) {
			PyErr_SetString(PyExc_TypeError, "a tally's last_reset is not (ns, direction, reason)");
			return -1;
		}
		uint64_t then = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(last, 0));
		if (PyErr_Occurred())
			return -1;
		if (ns >= then) {
			PyObject *now = Py_BuildValue("(Kkk)", (unsigned long long)ns, direction, reason);
			if (!now)
				return -1;
			PyObject_GC_UnTrack(now);	/* three numbers: never in a cycle */
			sset(t, K_LAST_RESET, now);
		}
	}
	return 0;
}

/* Each (keys, values) batch of `batches` as raw bytes, checked to hold whole entries. */
static int batch_of(PyObject *pair, Py_ssize_t ksize, Py_ssize_t vsize, const char **k, const char **v, Py_ssize_t *n)
{
	if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(pair, 0)) ||
	    !PyBytes_Check(PyTuple_GET_ITEM(pair, 1))) {
		PyErr_SetString(PyExc_TypeError, "take_counts: a batch is (keys bytes, values bytes)");
		return -1;
	}
	Py_ssize_t klen = PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 0)), vlen = PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 1));
	if (klen % ksize || vlen % vsize || klen / ksize != vlen / vsize) {
		PyErr_SetString(PyExc_ValueError, "take_counts: a batch of partial or unpaired entries");
		return -1;
	}
	*k = PyBytes_AS_STRING(PyTuple_GET_ITEM(pair, 0));
	*v = PyBytes_AS_STRING(PyTuple_GET_ITEM(pair, 1));
	*n = klen / ksize;
	return 0;
}

/* take_counts(events, drops, socks, now) -> cookies whose totals changed: one drained
 * generation of sock_events (batches of cookies and struct sock_events) and sock_drops
 * (batches of struct sock_drop_key and u64 counts) added to the tallies, as _take_counts. */
static PyObject *take_counts(PyObject *self, PyObject *args)
{
	PyObject *events, *drops, *socks, *now, *changed;

	if (!PyArg_ParseTuple(args, "O!O!O!O", &PyList_Type, &events, &PyList_Type, &drops, &PyDict_Type, &socks, &now))
		return NULL;
	if (!ready())
		return NULL;
	if (!(changed = PySet_New(NULL)))
		return NULL;
	for (int kind = 0; kind < 2; kind++) {
		PyObject *batches = kind ? drops : events;
		for (Py_ssize_t b = 0; b < PyList_GET_SIZE(batches); b++) {
			const char *k, *v;
			Py_ssize_t n;
			if (batch_of(PyList_GET_ITEM(batches, b), kind ? DROP_KEY_SIZE : 8, kind ? 8 : EVENTS_SIZE, &k, &v, &n) < 0)
				goto fail;
			for (Py_ssize_t i = 0; i < n; i++) {
				const char *key = k + i * (kind ? DROP_KEY_SIZE : 8), *val = v + i * (kind ? 8 : EVENTS_SIZE);
				PyObject *cookie = PyLong_FromUnsignedLongLong(u64_at(key));
				PyObject *t = cookie ? sock_of(socks, cookie) : NULL;
				int rc = t ? 0 : -1;
				if (!rc)
					rc = kind ? slot_added(t, K_DROPS, u32_at(key + 8), u64_at(val)) : take_event(t, val);
				if (!rc) {
					sset(t, K_VERSION, Py_NewRef(now));
					rc = PySet_Add(changed, cookie);
				}
				Py_XDECREF(cookie);
				if (rc < 0)
					goto fail;
			}
		}
	}
	return changed;
fail:
	Py_DECREF(changed);
	return NULL;
}

/* The key _flow_failures caches a FlowFailures under: (drops and tuple(drops.items()),
 * resets_sent, resets_received, direction, reason). */
static PyObject *ff_key(PyObject *t)
{
	PyObject *drops = sget(t, K_DROPS), *last = sget(t, K_LAST_RESET), *first;
	if (!PyTuple_Check(last) || PyTuple_GET_SIZE(last) != 3) {
		PyErr_SetString(PyExc_TypeError, "a tally's last_reset is not (ns, direction, reason)");
		return NULL;
	}
	int some = PyObject_IsTrue(drops);
	if (some < 0)
		return NULL;
	if (some) {
		PyObject *items = PyDict_Check(drops) ? PyDict_Items(drops) : NULL;
		if (!items) {
			if (!PyErr_Occurred())
				PyErr_SetString(PyExc_TypeError, "a tally's drops is not a dict");
			return NULL;
		}
		first = PyList_AsTuple(items);
		Py_DECREF(items);
		if (!first)
			return NULL;
	} else {
		first = Py_NewRef(drops);
	}
	PyObject *key = PyTuple_Pack(5, first, sget(t, K_SENT), sget(t, K_RECEIVED), PyTuple_GET_ITEM(last, 1),
				     PyTuple_GET_ITEM(last, 2));
	Py_DECREF(first);
	return key;
}

/* d.pop(key, None) */
static int discard(PyObject *d, PyObject *key)
{
	int in = PyDict_Contains(d, key);
	return in > 0 ? PyDict_DelItem(d, key) : in;
}

/* settle_flows(cookies, socks, flows, shown_flows, unknown, ff_cache, flow_failures)
 * -> (per_flow, rest): _settle's common case. Each cookie with a tally that `flows` lists is
 * shown, no longer unknown, and gets its FlowFailures (from ff_cache, else flow_failures(t));
 * a cookie without a tally is no longer unknown; the others (listeners, sockets not known
 * yet) are left to Python in `rest`, in order. */
static PyObject *settle_flows(PyObject *self, PyObject *args)
{
	PyObject *cookies, *socks, *flows, *shown, *unknown, *cache, *make, *it, *cookie;
	PyObject *per_flow = NULL, *rest = NULL;

	if (!PyArg_ParseTuple(args, "OO!OO!O!O!O", &cookies, &PyDict_Type, &socks, &flows, &PySet_Type, &shown,
			      &PyDict_Type, &unknown, &PyDict_Type, &cache, &make))
		return NULL;
	if (!ready())
		return NULL;
	if (!(it = PyObject_GetIter(cookies)))
		return NULL;
	if (!(per_flow = PyDict_New()) || !(rest = PyList_New(0)))
		goto fail;
	while ((cookie = PyIter_Next(it))) {
		int rc = -1;
		PyObject *t = PyDict_GetItemWithError(socks, cookie);
		if (!t) {
			rc = PyErr_Occurred() ? -1 : discard(unknown, cookie);
		} else {
			int listed = PySequence_Contains(flows, cookie);
			if (listed == 0) {
				rc = PyList_Append(rest, cookie);
			} else if (listed > 0) {
				sset(t, K_SHOWN, Py_NewRef(Py_True));
				rc = PySet_Add(shown, cookie) < 0 ? -1 : discard(unknown, cookie);
				PyObject *key = rc ? NULL : ff_key(t), *ff = NULL;
				if (key) {
					ff = PyDict_GetItemWithError(cache, key);
					if (ff)
						Py_INCREF(ff);
					else if (!PyErr_Occurred())
						ff = PyObject_CallOneArg(make, t);
					Py_DECREF(key);
				}
				rc = ff ? PyDict_SetItem(per_flow, cookie, ff) : -1;
				Py_XDECREF(ff);
			}
		}
		Py_DECREF(cookie);
		if (rc < 0)
			goto fail;
	}
	if (PyErr_Occurred())
		goto fail;
	Py_DECREF(it);
	PyObject *out = PyTuple_Pack(2, per_flow, rest);
	Py_DECREF(per_flow);
	Py_DECREF(rest);
	return out;
fail:
	Py_DECREF(it);
	Py_XDECREF(per_flow);
	Py_XDECREF(rest);
	return NULL;
}

static PyMethodDef methods[] = {
	{"setup", setup, METH_VARARGS, "The tally class and the reset directions it is told."},
	{"take_counts", take_counts, METH_VARARGS, "A drained generation added to the tallies: cookies changed."},
	{"settle_flows", settle_flows, METH_VARARGS, "FlowFailures of listed flows; the rest for Python."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT, "_failure_tally", "The failure engine's per-socket tallies, in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__failure_tally(void)
{
	return PyModule_Create(&module);
}
