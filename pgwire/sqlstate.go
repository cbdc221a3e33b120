package pgwire

// SQLSTATE codes the proxy reports itself. Values are PostgreSQL's (errcodes.txt).
const (
	SuccessfulCompletion          = "00000"
	ConnectionException           = "08000"
	ConnectionFailure             = "08006"
	SQLClientUnableToEstablish    = "08001"
	ProtocolViolation             = "08P01"
	FeatureNotSupported           = "0A000"
	InvalidAuthorization          = "28000"
	InsufficientPrivilege         = "42501"
	SyntaxError                   = "42601"
	UndefinedObject               = "42704"
	InvalidPassword               = "28P01"
	InvalidCatalogName            = "3D000"
	InvalidSQLStatementName       = "26000"
	DuplicatePreparedStatement    = "42P05"
	ReadOnlySQLTransaction        = "25006"
	TooManyConnections            = "53300"
	ProgramLimitExceeded          = "54000"
	QueryCanceled                 = "57014"
	AdminShutdown                 = "57P01"
	CannotConnectNow              = "57P03"
	IdleInTransactionTimeout      = "25P03"
	IdleSessionTimeout            = "57P05"
	InternalError                 = "XX000"
	ConfigurationLimitExceeded    = "53400"
	InvalidParameterValue         = "22023"
	CachedPlanMustNotChangeResult = "0A000" // feature_not_supported, message "cached plan must not change result type"
)

// Severities as sent in the 'S' and 'V' fields.
const (
	SeverityError = "ERROR"
	SeverityFatal = "FATAL"
)
