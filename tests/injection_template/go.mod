module extproc-audit/injection_template

go 1.22
