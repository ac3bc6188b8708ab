"""Study-level audits of a classifier: ``blackbox-lime audit run | summary | verify | report``.

- :mod:`~blackbox_lime.audit.store`: the SQLite store (cases, answered queries, configuration);
- :mod:`~blackbox_lime.audit.answers`: the adapter that answers from the store first (exactly once);
- :mod:`~blackbox_lime.audit.source`: the study (a folder or a CSV manifest);
- :mod:`~blackbox_lime.audit.runner`: one case as a pure function, and the coordinator that writes;
- :mod:`~blackbox_lime.audit.flags`: shortcut, fidelity and STTA flags per case;
- :mod:`~blackbox_lime.audit.report`: the study summary and the self-contained HTML report;
- :mod:`~blackbox_lime.audit.provenance`: SHA-256 of every input and output, and their verification.
"""
